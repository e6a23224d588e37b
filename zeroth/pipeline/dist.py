"""Ranks: a run on N processes, launched by torchrun (or `zeroth run --nproc N`, which calls it).

Every process runs the same pipeline; what differs is which share of the work it does:

    share(n)         the contiguous block of n items (prompts, groups, batch rows) this rank does
    gather(x)        every rank's x, in rank order, on every rank (torch's object all-gather)
    joined(*lists)   each list joined over the ranks: the results of every rank's share
    all_sum(values)  floats summed over ranks
    sync_grads(ps)   gradients summed over ranks: the losses are normalised by the global batch
                     (tokens or sequences of all ranks), so the sum is world 1's gradient
    on_main(fn)      rank 0 alone runs fn (writes a file, a checkpoint); the others wait for it
                     and get its result, or its error

Rank 0 is the one writer: the ledger, metrics, progress, checkpoints and summary.json are its;
the others keep the same state in memory and write nothing. Gradients are reduced with one
all-reduce of a flat buffer per optimiser step, as DDP does, but explicitly: the lean log-prob
path calls the model's modules directly, which DDP's forward hook would not see.

With train.parallel=fsdp the model is sharded with FSDP2 instead (`shard`): its backward
reduce-scatters the gradients; `full_params` gathers the weights for generation and `plain` /
`optimizer_state` gather them to rank 0 for a checkpoint, which stays a plain Hugging Face
folder plus a whole optimiser state, so a run resumes at any world size.

Without torchrun (WORLD_SIZE unset or 1) nothing here communicates: world() is 1, share(n) is
everything, gather(x) is [x]. Collectives use gloo on CPU and NCCL on GPU.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as td

from zeroth.models.precision import precision_of

TIMEOUT = timedelta(minutes=30)  # a collective waits this long for a rank that hangs


def launched() -> bool:
    """Is this process one rank of several (torchrun set WORLD_SIZE > 1)?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "cpu") -> None:
    """Join the process group torchrun describes in the environment (once; nothing when this
    process runs alone). On GPU each rank takes the device LOCAL_RANK."""
    if not launched() or td.is_initialized():
        return
    backend = "gloo"
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    td.init_process_group(backend, timeout=TIMEOUT)


def world() -> int:
    return td.get_world_size() if td.is_initialized() else 1


def rank() -> int:
    return td.get_rank() if td.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_world() -> int:
    """Ranks on this machine (torchrun's LOCAL_WORLD_SIZE; 1 alone)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if td.is_initialized() else 1


def threads(total: int) -> int:
    """Threads per rank when `total` is what the whole machine may use: split between the
    ranks on it (at least 1 each)."""
    return max(1, total // local_world())


def share(n: int, of_rank: int | None = None) -> range:
    """The contiguous block of range(n) that rank `of_rank` (default: this one) works on;
    blocks differ in size by one at most and cover range(n) in rank order."""
    r, w = rank() if of_rank is None else of_rank, world()
    return range(n * r // w, n * (r + 1) // w)


def barrier() -> None:
    if td.is_initialized():
        td.barrier()


def gather(obj) -> list:
    """[rank 0's obj, rank 1's obj, ...] on every rank ([obj] alone)."""
    if not td.is_initialized():
        return [obj]
    out: list = [None] * world()
    td.all_gather_object(out, obj)
    return out


def joined(*lists: list) -> tuple[list, ...]:
    """Each list joined over the ranks in rank order (the lists of this rank's share of some
    items become the lists of all the items, on every rank)."""
    if not td.is_initialized():
        return lists
    every = gather(lists)
    return tuple([x for part in every for x in part[i]] for i in range(len(lists)))


def broadcast(obj):
    """Rank 0's obj, on every rank."""
    if not td.is_initialized():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" \
        else torch.device("cpu")


def all_sum(values: list[float]) -> list[float]:
    """Each value summed over the ranks (float64)."""
    if not td.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    td.all_reduce(t)
    return t.tolist()


def sync_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks, in one all-reduce of a flat buffer (a
    parameter without a gradient on this rank counts as zeros)."""
    if not td.is_initialized() or (params and hasattr(params[0], "device_mesh")):
        return  # alone, or FSDP (its backward reduce-scatters the gradients itself)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])  # fp32 sums
    td.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n


def on_main(fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs) on rank 0 alone; every rank returns its result. When fn raises on
    rank 0, the others exit with code 2 and leave the message to rank 0 (none waits forever)."""
    if not td.is_initialized():
        return fn(*args, **kwargs)
    result = None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            broadcast((None, True))
            raise
    result, failed = broadcast((result, False))
    if failed:
        raise SystemExit(2)
    return result


@contextmanager
def peer_lost(run_dir) -> Iterator[None]:
    """A collective that fails because another rank is gone (killed, crashed) becomes one line
    and exit code 1, not a traceback: the launcher names the rank that died."""
    try:
        yield
    except RuntimeError as exc:
        if world() == 1 or not (isinstance(exc, td.DistError) or "gloo" in str(exc)
                                or "NCCL" in str(exc)):
            raise
        text = re.sub(r"\[[^\]]*\]:?\s*", "", str(exc).splitlines()[0]).split(". ")[0][:120]
        print(f"zeroth: error: rank {rank()} stopped: another rank is gone ({text}); resume "
              f"with the same launch and --resume {run_dir}", file=sys.stderr)
        raise SystemExit(1) from None


# ---------------------------------------------------------------------------------------------
# FSDP2 (train.parallel=fsdp): parameters, gradients and optimiser state sharded over the ranks.
# ---------------------------------------------------------------------------------------------


def shard(model, parallel: str):
    """`model` with rank 0's weights on every rank (as DDP starts: a model built from the same
    seed on other hardware could differ), then sharded with FSDP2 when `parallel` is "fsdp"
    (each decoder layer one unit, the rest the root's; on GPU with bf16-mixed precision, bf16
    compute with fp32 gradient reductions). Alone: `model` as it is. Gradients are summed, not averaged, over the ranks: every rank's loss is
    already its part of the whole batch's (gloo has no pre-scaled sum: plain SUM is forced)."""
    if world() == 1:
        return model
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            td.broadcast(tensor.data, src=0)
    if parallel != "fsdp":
        return model
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()  # on CPU, bf16-mixed is the autocast of each forward
    if next(model.parameters()).is_cuda and precision_of(model) == "bf16-mixed":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    body = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA: peft
    for layer in body.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def full_params(model) -> Iterator[None]:
    """Inside, a sharded model holds its whole weights on every rank and its forward passes
    communicate nothing, so ranks may run different numbers of them (generation); outside, it
    is sharded again. Nested uses do nothing more. Every rank must enter it together."""
    if not sharded(model) or getattr(model, "_zeroth_full", False):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    model._zeroth_full = True
    try:
        yield
    finally:
        model._zeroth_full = False
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def plain(model):
    """The model as one process holds it: `model` itself unless sharded; sharded, a plain copy
    with the whole weights gathered to CPU on rank 0 (None on the other ranks), for saving.
    Every rank must call it together."""
    if not sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))
    if not is_main():
        return None
    if hasattr(model, "get_base_model"):  # LoRA: the same adapters on a plain base, then load
        from peft import get_peft_model

        base = model.get_base_model()
        copy = get_peft_model(type(base)._from_config(base.config),
                              model.peft_config[model.active_adapter])
        copy.load_state_dict(full)
        return copy.eval()
    with torch.device("meta"):
        copy = type(model)._from_config(model.config)
    copy.load_state_dict(full, assign=True)
    for name, buffer in model.named_buffers():  # not in the state dict (rotary frequencies)
        owner, _, attr = name.rpartition(".")
        copy.get_submodule(owner).register_buffer(attr, buffer.detach().cpu().clone(),
                                                  persistent=False)
    copy.tie_weights()
    copy.generation_config = model.generation_config
    return copy.eval()


def optimizer_state(model, optimizer) -> dict | None:
    """What a checkpoint saves of `optimizer`: its state_dict, or for a sharded model the whole
    state keyed by parameter name (rank 0; every rank must call it). None for None."""
    if optimizer is None or not sharded(model):
        return None if optimizer is None else optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, saved: dict) -> None:
    """Put back what `optimizer_state` saved, whichever way it was saved and whatever the
    world size now: a plain state_dict into a plain model as is; otherwise through torch's
    name-keyed loader (for a sharded model, each rank takes its shard)."""
    by_name = any(isinstance(k, str) for k in saved.get("state", {}))
    if not sharded(model) and not by_name:
        optimizer.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    if not by_name:  # saved by one process: the optimizer's parameters in their order
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        saved = {"state": {names[i]: v for i, v in saved["state"].items()},
                 "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                                  for g in saved["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, optim_state_dict=saved,
                             options=StateDictOptions(full_state_dict=True))


def finish() -> None:
    """Leave the process group (at the end of a run). vLLM engines go first: their shutdown
    takes down the groups they made, the default one included."""
    if "zeroth.rollout.vllm_engine" in sys.modules:
        sys.modules["zeroth.rollout.vllm_engine"].shutdown_all()
    if td.is_initialized():
        td.destroy_process_group()
