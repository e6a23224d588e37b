"""How much memory a run will need, estimated before anything is loaded.

Parameters are counted on the meta device from config.json (or the from-scratch shape): no
weight is read. Terms, in bytes:

    weights      parameters x dtype bytes (+ LoRA adapters, float32)
    grads        trainable parameters x their bytes (LoRA: the adapters only)
    optimizer    AdamW: 2 states per trainable parameter, in the parameter's dtype
    reference    a second copy of the weights, when an rl stage has beta > 0
    activations  the largest training step: B x T tokens x layers x (12 x hidden + 4 x
                 intermediate) values at the weights' dtype (measured on Qwen2: attention and
                 norms keep ~12 hidden-sized tensors per token, the gated MLP ~4 intermediate
                 ones, i.e. 28-34 x hidden for usual shapes), plus the logits and their gradient
                 (2 x B x T x vocab x 4 bytes). Gradient checkpointing keeps one hidden state per
                 layer instead ((layers + 3) x hidden) and recomputes one layer at a time.
                 B: rl.minibatch_size capped by prompts_per_step x group_size (pretrain, sft:
                 their batch_size); T: prompt tokens + max_new_tokens.
    kv_cache     the largest generation: rows x T x layers x 2 x kv_heads x head_dim x bytes (4
                 on a CPU, where decoding attends in float32)
                 (rl: prompts_per_step x group_size rows; eval and rejection: their batch_size)
    decode       zeroth.models.lean's decoding copy of the decoder layers' weights (fused, input-
                 major), made for each generation when the lean path applies (Qwen2/Llama,
                 no LoRA)
    vllm         a vLLM engine on the run's device (rl.engine=vllm, or a vllm-server zeroth
                 starts on the same device): its copy of the weights and its KV cache
                 (vllm.kv_cache_gib; on CPU 1 GiB by default), or on a GPU without
                 kv_cache_gib the vllm.gpu_memory share of the GPU it reserves

The peak is weights + grads + optimizer + reference + vllm + max(activations, kv_cache +
decode): gradients stay allocated while the next batch is generated, activations and
generation never coexist; vLLM holds its memory throughout.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from zeroth.config import Config, pipeline, resolve_rl, stage_config
from zeroth.errors import UserError
from zeroth.models.hf import TAGS, as_dtype, hf_config, lora_config, pick_device
from zeroth.models.lean import SUPPORTED

PROMPT_TOKENS = 128  # a prompt's length in tokens when the caller does not know it
PARTS = [("weights", "weights"), ("grads", "grads"), ("optimizer", "AdamW"),
         ("reference", "reference"), ("activations", "activations"), ("kv_cache", "KV cache"),
         ("decode", "decoding weights"), ("vllm", "vLLM engine"), ("distill", "distill stage")]


def model_shape(model_cfg) -> dict:
    """Parameter counts and sizes of the model `model_cfg` describes, from its config alone."""
    from transformers import AutoModelForCausalLM

    try:
        config, lora = _configs(model_cfg)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model path '{model_cfg.path}': cannot read its config: {first}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        params = sum(p.numel() for p in model.parameters())
        adapters = 0
        if lora is not None:
            from peft import get_peft_model

            try:
                with warnings.catch_warnings():  # peft asks a deprecated transformers API
                    warnings.simplefilter("ignore", FutureWarning)
                    model = get_peft_model(model, lora)
            except ValueError as exc:
                raise UserError(f"model.lora_targets={model_cfg.lora_targets!r}: "
                                f"{str(exc).strip().splitlines()[0]}") from None
            adapters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    text = config.get_text_config()
    heads = text.num_attention_heads
    body = getattr(model, "model", None)
    lean = lora is None and getattr(config, "model_type", None) in SUPPORTED and body is not None
    return {"params": params, "lora": adapters, "layers": text.num_hidden_layers,
            "decode": sum(p.numel() for p in body.layers.parameters()) if lean else 0,
            "hidden": text.hidden_size,
            "intermediate": getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
            "vocab": text.vocab_size,
            "kv_dim": (getattr(text, "num_key_value_heads", None) or heads)
            * (getattr(text, "head_dim", None) or text.hidden_size // heads)}


def _configs(model_cfg):
    """(transformers config, peft LoraConfig or None) of the model `model_cfg` describes."""
    from transformers import AutoConfig

    lora = None
    if model_cfg.path:
        folder = Path(model_cfg.path).expanduser()
        if (folder / "adapter_config.json").is_file():
            from peft import LoraConfig

            lora = LoraConfig.from_pretrained(folder)
            if not (folder / "config.json").is_file():
                folder = json.loads((folder / "adapter_config.json").read_text(
                    encoding="utf-8"))["base_model_name_or_path"]
        config = AutoConfig.from_pretrained(folder)
    else:  # the from-scratch model: the trained vocabulary plus the reasoning tags
        config = hf_config(model_cfg, model_cfg.vocab_size + len(TAGS))
    if lora is None and model_cfg.lora_r > 0:
        lora = lora_config(model_cfg)
    return config, lora


def _batches(cfg: Config, prompt_tokens: int) -> tuple[list, list]:
    """(rows, tokens) of every training step and of every generation the pipeline will run."""
    train, gen = [], []
    for i, (_, kind, _) in enumerate(pipeline(cfg)):
        s = stage_config(cfg, i)
        if kind == "rl":
            n = s.rl.prompts_per_step * s.rl.group_size
            t = prompt_tokens + s.rl.max_new_tokens
            train.append((min(n, s.rl.minibatch_size), t))
            gen.append((n, t))
        elif kind in ("pretrain", "sft"):
            train.append((getattr(s, kind).batch_size, prompt_tokens + s.rl.max_new_tokens))
        elif kind == "rejection":
            r = s.rejection
            gen.append((min(r.batch_size, r.prompts * r.samples), prompt_tokens
                        + r.max_new_tokens))
    e = cfg.eval
    gen.append((min(e.batch_size, cfg.task.eval_problems * e.k), prompt_tokens
                + e.max_new_tokens))
    return train, gen


def activation_bytes(shape: dict, rows: int, tokens: int, checkpointing: bool,
                     size: int = 4) -> int:
    """Peak bytes a training step (forward + backward) of rows x tokens keeps: see above."""
    h, layers, inter = shape["hidden"], shape["layers"], shape["intermediate"]
    layer = 12 * h + 4 * inter  # values kept per token by one decoder layer
    per_token = ((layers + 3) * h + layer) if checkpointing else layers * layer
    return rows * tokens * (per_token * size + 2 * shape["vocab"] * 4)


def estimate(cfg: Config, model_cfg=None, prompt_tokens: int | None = None) -> dict:
    """Bytes of each term (see the module docstring) and their peak `total`; also `params`,
    `trainable`. `model_cfg` defaults to cfg.model."""
    m = model_cfg or cfg.model
    shape = model_shape(m)
    size = torch.tensor([], dtype=as_dtype(m.dtype)).element_size()
    prompt_tokens = prompt_tokens or PROMPT_TOKENS
    if not m.path:  # the from-scratch model is trained on sequences up to max_len
        prompt_tokens = min(prompt_tokens, m.max_len)
    train, gen = _batches(cfg, prompt_tokens)
    if not m.path:
        train = [(b, min(t, m.max_len)) for b, t in train]
        gen = [(b, min(t, m.max_len)) for b, t in gen]
    lora = shape["lora"] > 0
    trainable = shape["lora"] if lora else shape["params"]
    step = 4 if lora else size  # LoRA adapters are float32
    acts = max((activation_bytes(shape, b, t, m.gradient_checkpointing, size)
                for b, t in train), default=0)
    on_cpu = pick_device(cfg.run.device).type == "cpu"
    kv_size = 4 if on_cpu and not lora else size  # the lean decoder's cache: float32 on a CPU
    kv = max(b * t * shape["layers"] * 2 * shape["kv_dim"] * kv_size for b, t in gen)
    weights = shape["params"] * size + shape["lora"] * 4
    uses_ref = any(kind == "rl" and stage_config(cfg, i).rl.beta > 0
                   for i, (_, kind, _) in enumerate(pipeline(cfg)))
    out = {"params": shape["params"], "trainable": trainable, "weights": weights,
           "grads": trainable * step, "optimizer": 2 * trainable * step,
           "reference": weights if uses_ref else 0, "activations": acts, "kv_cache": kv,
           "decode": shape["decode"] * size}
    out["vllm"] = vllm_bytes(cfg, shape["params"] * size) if model_cfg is None else 0
    out["total"] = (sum(out[k] for k in ("weights", "grads", "optimizer", "reference", "vllm"))
                    + max(acts, kv + out["decode"]))
    out["distill"] = 0
    if model_cfg is None:  # the policy; a distill stage holds its teacher and a student instead
        out["distill"] = max((_distill_bytes(cfg, i, weights, prompt_tokens)
                              for i, (_, kind, _) in enumerate(pipeline(cfg))
                              if kind == "distill"), default=0)
        out["total"] = max(out["total"], out["distill"])
    return out


def uses_vllm(cfg: Config) -> bool:
    return cfg.rl.engine in ("vllm", "vllm-server")


def check_vllm(cfg: Config) -> None:
    """Before anything is written: with rl.engine=vllm or vllm-server, vLLM is installed and
    runs the pipeline's model on the run's device (else a UserError saying what to change)."""
    import importlib.util

    if not uses_vllm(cfg):
        return
    if importlib.util.find_spec("vllm") is None:
        from zeroth.rollout.vllm_engine import require_vllm

        require_vllm()  # raises, with how to install it
    from zeroth.rollout.vllm_engine import check_config

    check_config(_configs(cfg.model)[0], pick_device(cfg.run.device))


def vllm_bytes(cfg: Config, weights: int) -> int:
    """What a vLLM engine on the run's device holds (see the module docstring); 0 without."""
    v, engine = cfg.vllm, cfg.rl.engine
    if engine != "vllm" and not (engine == "vllm-server" and not v.url and not v.devices):
        return 0
    device = pick_device(cfg.run.device)
    if v.kv_cache_gib is None and device.type == "cuda":
        return int(v.gpu_memory * torch.cuda.get_device_properties(device).total_memory)
    from zeroth.rollout.vllm_engine import CPU_KV_CACHE_GIB

    gib = v.kv_cache_gib if v.kv_cache_gib is not None else CPU_KV_CACHE_GIB
    return weights + int(gib * 2**30)


def _distill_bytes(cfg: Config, index: int, teacher_weights: int, prompt_tokens: int) -> int:
    """A distill stage's peak: the teacher's weights (the pipeline's model), the student with
    its gradients, AdamW and activations, and the teacher's logits of a batch."""
    s = stage_config(cfg, index)
    d, student = s.distill, s.student
    tokens = prompt_tokens + d.max_new_tokens
    if not student.path:
        tokens = min(tokens, student.max_len)
    est = estimate(replace(s, run=replace(s.run, pipeline=[{"sft": {"batch_size": d.batch_size}}]),
                           rl=replace(s.rl, max_new_tokens=d.max_new_tokens)),
                   model_cfg=student, prompt_tokens=prompt_tokens)
    vocab = model_shape(cfg.model)["vocab"]
    return est["total"] - est["reference"] + teacher_weights + d.batch_size * tokens * vocab * 4


def available(device: str | torch.device = "cpu") -> int | None:
    """Free bytes on `device`: torch.cuda.mem_get_info on a GPU, MemAvailable (or psutil) on
    the CPU; None when it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return int(psutil.virtual_memory().available)


def _fmt(est: dict, free: int | None, device) -> str:
    gib = est["total"] >= 2**30
    unit, scale = ("GiB", 2**30) if gib else ("MiB", 2**20)
    parts = ", ".join(f"{label} {est[k] / scale:.1f}" if est[k] else f"{label} -"
                      for k, label in PARTS)
    where = "free memory unknown" if free is None else f"{free / scale:.1f} {unit} free"
    return f"memory estimate: {est['total'] / scale:.1f} {unit} ({parts}) of {where} on {device}"


def report(cfg: Config, prompt_tokens: int | None = None) -> str:
    """One line: the estimate, its terms and the memory free on the run's device."""
    device = pick_device(cfg.run.device)
    return _fmt(estimate(cfg, prompt_tokens=prompt_tokens), available(device), device)


def check(cfg: Config, prompt_tokens: int | None = None) -> str:
    """The report line; a UserError saying what to change when the run will not fit in what is
    free (and run.memory_check is on)."""
    device = pick_device(cfg.run.device)
    check_vllm(cfg)
    est = estimate(cfg, prompt_tokens=prompt_tokens)
    free = available(device)
    line = _fmt(est, free, device)
    need = est["total"]
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: ranks sharing this machine
    if ranks > 1 and device.type == "cpu":  # one GPU a rank; on CPU they share the memory
        need *= ranks
        line = line.replace(" of ", f" a rank, x {ranks} ranks, of ", 1)
    if cfg.run.memory_check and free is not None and need > free:
        raise UserError(f"{line} — it will not fit: try {', '.join(_advice(cfg))}, or "
                        "run.memory_check=false to start anyway")
    return line


def _advice(cfg: Config) -> list[str]:
    m, tips = cfg.model, []
    if m.lora_r == 0:
        tips.append("model.lora_r=16 (LoRA)")
    if m.dtype == "float32":
        tips.append("model.dtype=bfloat16")
    if not m.gradient_checkpointing:
        tips.append("model.gradient_checkpointing=true")
    kinds = [kind for _, kind, _ in pipeline(cfg)]
    if "rl" in kinds and cfg.rl.minibatch_size > 1:
        tips.append(f"a smaller rl.minibatch_size (e.g. {max(1, cfg.rl.minibatch_size // 2)})")
    if "rl" in kinds and resolve_rl(cfg.rl).beta > 0:
        tips.append("rl.beta=0 (no reference model)")
    return tips or ["a smaller model or batch"]
