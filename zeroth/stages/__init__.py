"""Pipeline stages, each a small module with `run(r) -> dict` (its statistics for the summary),
`CHANGES_MODEL` (is the held-out set evaluated after it?) and, optionally, `start(r)` (work done
once as it starts fresh, before its first checkpoint):

    pretrain   next-token prediction on the task's demonstrations (the imitation ceiling)
    sft        supervised fine-tuning on chat data, the loss on the answer tokens only
    rl         the GRPO family: sample, score, advantage, update (the RL loop)
    rejection  sample N per prompt, keep the verified-correct ones, write an SFT dataset
    distill    a teacher's verified traces (and its logits, when tokenizers match) teach a student

and eval (`run(r, phase)`), which the pipeline runs at the start and after every stage that
changes the model. pretrain, sft and distill train with the one supervised loop
(supervised.py).

`r` is the pipeline's runner (zeroth.pipeline.run): run dir, config, stage id, model,
tokenizer, task, ledger, display, state, save() and evaluate(). A stage producing a new policy
assigns it to r.model / r.tokenizer; every random choice is seeded from (run seed, stage id), so
a stage killed at a checkpoint and resumed ends where an uninterrupted one would.
"""

from zeroth.registry import Registry

STAGES = Registry("stage", {kind: f"zeroth.stages.{kind}" for kind in (
    "pretrain", "sft", "rl", "rejection", "distill")})  # run.pipeline kinds -> stage modules
