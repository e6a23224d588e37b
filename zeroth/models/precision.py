"""How a model computes: `model.precision` = fp32 | bf16-mixed | auto.

bf16-mixed is the usual mixed-precision policy: the weights, their gradients and the optimiser's
state stay float32 (the master copy), and the forward runs under `torch.autocast` in bfloat16 —
matrix products in bf16; attention (zeroth.models.lean), the residual stream, norms' statistics
and every log-prob and loss in float32. The backward runs in the precision its forward used. On CPU this
needs AVX-512 BF16 or AMX to be faster (the matrix products of the 32M and 140M benchmark
shapes run 2-3x faster in bf16 there); on GPU, bf16 support.

auto picks bf16-mixed where the hardware has fast bf16 *and* the model is wide enough to gain
(`MIN_HIDDEN`, measured: below it, the casts cost more than the products save), else fp32.
A model whose weights are stored in bfloat16 (`model.dtype=bfloat16`) computes in bf16 as it
is; precision then has nothing to add.

The choice travels with the model object (`set_precision`), so every stage, the reference
model and the evaluations compute alike; `autocast(model)` is the context each forward pass
runs in.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

MIN_HIDDEN = 128  # auto: bf16-mixed from this width up (measured: the default 128-wide model's
# pre-training step 1.5x faster, an RL step about 1.1-1.2x; a 64-wide one gains nothing)
_ATTR = "zeroth_precision"


def fast_bf16(device: torch.device) -> bool:
    """The device multiplies bf16 matrices faster than fp32: a GPU with bf16 support, or a CPU
    with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, p)() for p in probes)
    except AttributeError:  # an older or newer torch without the probes: ask the kernel
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve(precision: str, dtype: str, hidden_size: int, device: torch.device) -> str:
    """fp32 or bf16-mixed: what `precision` means for a model of `dtype` weights and
    `hidden_size` on `device`."""
    if dtype != "float32" or precision == "fp32":
        return "fp32"
    if precision == "bf16-mixed":
        return precision
    return "bf16-mixed" if hidden_size >= MIN_HIDDEN and fast_bf16(device) else "fp32"


def set_precision(model, precision: str, dtype: str | None = None):
    """`model`, marked to compute in `precision` (fp32 | bf16-mixed | auto, resolved here for
    its width, device and weights' `dtype`, by default the one they are in). Returns it."""
    first = next(model.parameters())
    device = first.device
    dtype = dtype or ("float32" if first.dtype == torch.float32 else str(first.dtype))
    hidden = getattr(getattr(model, "config", None), "hidden_size", 0) or 0
    setattr(model, _ATTR, resolve(precision, dtype, hidden, device))
    return model


def precision_of(model) -> str:
    """fp32 or bf16-mixed: how `model` computes (fp32 unless `set_precision` said otherwise)."""
    return getattr(model, _ATTR, "fp32")


def autocast(model):
    """The context a forward pass of `model` runs in: bf16 autocast on the model's device for
    bf16-mixed, nothing for fp32."""
    if precision_of(model) != "bf16-mixed":
        return contextlib.nullcontext()
    device = next(model.parameters()).device
    return torch.autocast(device.type, dtype=torch.bfloat16)


def compute_dtype(model) -> torch.dtype:
    """The dtype `model`'s matrix products run in: bf16 for bf16-mixed, else its weights'."""
    if precision_of(model) == "bf16-mixed":
        return torch.bfloat16
    return next(model.parameters()).dtype
