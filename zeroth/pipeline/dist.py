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

Without torchrun (WORLD_SIZE unset or 1) nothing here communicates: world() is 1, share(n) is
everything, gather(x) is [x]. Collectives use gloo on CPU and NCCL on GPU.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as td

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
    if not td.is_initialized():
        return
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
        text = str(exc).splitlines()[0][:160]
        print(f"zeroth: error: rank {rank()} stopped: another rank is gone ({text}); resume "
              f"with the same launch and --resume {run_dir}", file=sys.stderr)
        raise SystemExit(1) from None


def finish() -> None:
    """Leave the process group (at the end of a run)."""
    if td.is_initialized():
        td.destroy_process_group()
