"""Several processes, one run: the process group that `torchrun` launches, and what its ranks agree on.

`current()` reads which process this is from torchrun's RANK, WORLD_SIZE and LOCAL_RANK (a world of
one without them); `start()` joins the group (gloo on the CPU, nccl on CUDA, a GPU per local rank).
In a world of one everything is a no-op (`agree`, `gather`, `broadcast` return their input), so
callers have one code path. Every rank trains, validates and predicts its share; only rank 0 writes
and prints; decisions that end a loop are taken on values every rank holds, so none waits forever.
"""
from __future__ import annotations

import datetime
import time
from typing import Any, Sequence, TypeVar

import torch

from carvana.core import ranks

# Which process this is, read without torch in carvana.core.ranks; asked here too, beside the collectives.
Ranks, current, is_main = ranks.Ranks, ranks.current, ranks.is_main

T = TypeVar("T")

# How long a rank waits in a collective for the others (e.g. while rank 0 scores the validation
# cars at full resolution or merges the submission) before the run is declared stuck.
TIMEOUT = datetime.timedelta(hours=2)

# torch 2.13 keeps a gloo process group alive after destroy_process_group once a DistributedDataParallel
# was built on it, and its worker threads drop the last collective's tensors in their own time, which
# takes the GIL. A thread that asks for the GIL while Python shuts down aborts the process ("terminate
# called without an active exception", SIGABRT): 15 of 165 two-process runs on a loaded 2-core machine.
# With the GIL left free this long after leaving the group: 0 of 108.
GLOO_SETTLE_SECONDS = 0.1


def is_started() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def backend_for(device_type: str) -> str:
    """nccl between GPUs, gloo between CPUs."""
    return "nccl" if device_type == "cuda" else "gloo"


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: a bare `cuda` becomes the GPU of its local rank; others stay as they are."""
    ranks = current()
    if device.type == "cuda" and device.index is None and ranks.distributed:
        return torch.device("cuda", ranks.local_rank)
    return device


def start(device_type: str) -> Ranks:
    """Join the process group torchrun set up (once; nothing to do in a world of one)."""
    ranks = current()
    if not ranks.distributed or is_started():
        return ranks
    backend = backend_for(device_type)
    if backend == "nccl":
        torch.cuda.set_device(ranks.local_rank)
    torch.distributed.init_process_group(backend=backend, timeout=TIMEOUT)
    return ranks


def stop() -> None:
    """Leave the process group (at the end of a command)."""
    if not is_started():
        return
    gloo = torch.distributed.get_backend() == "gloo"
    torch.distributed.destroy_process_group()
    if gloo:
        time.sleep(GLOO_SETTLE_SECONDS)  # gloo's threads finish with Python objects before Python ends


def is_lost_process(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another process of the run is gone (killed,
    crashed, unreachable): what gloo and nccl raise then."""
    if isinstance(error, getattr(torch.distributed, "DistError", ())):
        return True
    signs = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo/transport", "NCCL")
    return isinstance(error, RuntimeError) and any(sign in str(error) for sign in signs)


def lost_process_message(error: BaseException) -> str:
    """One line for a run that stopped because another of its processes is gone."""
    detail = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    return (f"rank {current().rank}: another process of the run stopped or cannot be reached ({detail}); "
            "the run stops (torchrun names the process that failed)")


def _live() -> bool:
    return is_started() and torch.distributed.get_world_size() > 1


def barrier() -> None:
    """Wait until every rank is here."""
    if _live():
        torch.distributed.barrier()


def gather(value: T) -> list[T]:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    if not _live():
        return [value]
    values: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(values, value)
    return values


def broadcast(value: T, source: int = 0) -> T:
    """Rank `source`'s `value` (any picklable object) on every rank."""
    if not _live():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=source)
    return box[0]


def _collective_device() -> torch.device:
    """Where the small tensors of a collective live: the GPU for nccl, the CPU for gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on at least one (cheap enough to ask at every step)."""
    if not _live():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def from_main(values: Sequence[float]) -> list[float]:
    """Rank 0's `values` (the same length on every rank) on every rank, e.g. its clock, so that a time
    budget ends training at the same step everywhere."""
    if not _live():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    torch.distributed.broadcast(tensor, src=0)
    return [float(v) for v in tensor.tolist()]


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """The element-wise sums of each rank's `values` (the same length on every rank), on every rank."""
    if not _live():
        return [float(v) for v in values]
    return [float(sum(column)) for column in zip(*gather([float(v) for v in values]))]


def broadcast_module(module: torch.nn.Module, source: int = 0, buffers_only: bool = False) -> None:
    """Give every rank rank `source`'s parameters and buffers (e.g. the weights it loaded from a file);
    `buffers_only`: its buffers alone (batch norm's running statistics, which each rank updates on its
    own batches)."""
    if not _live():
        return
    tensors = [*([] if buffers_only else module.parameters()), *module.buffers()]
    with torch.no_grad():
        for tensor in tensors:
            if tensor.is_contiguous():
                torch.distributed.broadcast(tensor.data, src=source)
            else:  # e.g. a channels_last weight: sent in the standard layout, copied back into its own
                sent = tensor.data.contiguous()
                torch.distributed.broadcast(sent, src=source)
                tensor.data.copy_(sent)


def shard(count: int, ranks: Ranks | None = None) -> range:
    """The indices of `count` items that this rank handles: every `world_size`-th from its rank, so
    each item is handled by exactly one rank (no padding, unlike DistributedSampler)."""
    ranks = ranks or current()
    return range(ranks.rank, count, ranks.world_size)
