"""The torch plumbing of the loaders: one-line errors out of workers, batching, sharding, the DataLoader.

A DataError in a worker travels to the main process as a `LoadFailure` item and is raised there as
the DataError it was (`CarvanaLoader`); batches are stacked with numpy (`collate`); under torchrun a
`ShardSampler` gives each rank its share of the items, each item once.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from carvana.core import distributed
from carvana.core.errors import ConfigError, DataError
from carvana.core.process_lifetime import interrupts_deferred
from carvana.data.workers import worker_context, worker_init


@dataclass(frozen=True)
class LoadFailure:
    """A DataError raised in a loader worker, carried to the main process and raised there.

    torch re-raises a worker's exception by calling its class with one message string (the
    worker's whole traceback); DataError(path, problem) cannot be rebuilt that way, so torch would
    turn it into a multi-line RuntimeError and the CLI could not print it as one line.
    """

    path: Path
    problem: str


def load_or_failure(load: Callable[[int], Any], index: int) -> Any:
    """`load(index)`, or in a loader worker its DataError as a LoadFailure item (see CarvanaLoader)."""
    if get_worker_info() is None:
        return load(index)  # in the main process the error is raised as it is
    try:
        return load(index)
    except DataError as error:
        return LoadFailure(error.path, error.problem), None


def collate(batch: list[tuple[Any, Any]]) -> tuple[torch.Tensor, torch.Tensor | list[str]] | LoadFailure:
    """Stack the images; stack masks, or keep file names as a list of str.

    A batch with an item that failed to load becomes that failure (see CarvanaLoader).
    """
    failed = next((item[0] for item in batch if isinstance(item[0], LoadFailure)), None)
    if failed is not None:
        return failed
    if isinstance(batch[0][0], tuple):  # one input per geometry (CarvanaTestDataset of several)
        inputs = tuple(_stack([item[0][kind] for item in batch]) for kind in range(len(batch[0][0])))
        return inputs, [str(item[1]) for item in batch]  # type: ignore[return-value]
    images = _stack([item[0] for item in batch])
    seconds = [item[1] for item in batch]
    if isinstance(seconds[0], torch.Tensor):
        return images, _stack(seconds)
    return images, [str(s) for s in seconds]


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    # numpy, not torch.stack: torch splits small ops over its intra-op threads, which wait on each
    # other in a process that shares the cores with loader workers (see docs/benchmarks.md).
    return torch.from_numpy(np.stack([t.numpy() for t in tensors]))


class CarvanaLoader(DataLoader):
    """A DataLoader that raises a worker's DataError in the main process as a DataError."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        with interrupts_deferred():  # a Ctrl-C while workers start would leave them half started
            batches = super().__iter__()
        for batch in batches:
            if isinstance(batch, LoadFailure):
                raise DataError(batch.path, batch.problem)
            yield batch


class ShardSampler(Sampler[int]):
    """This rank's share of a dataset under torchrun, in order: items rank, rank + world_size, ...

    Every item is read by exactly one rank and none twice (DistributedSampler would pad the shares
    to one length with repeated items, which a metric or a submission must not count twice).
    `indices` are the dataset's indices of the items, in the order the loader yields them.
    """

    def __init__(self, count: int, ranks: distributed.Ranks | None = None):
        self.indices = list(distributed.shard(count, ranks))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    workers: int,
    shuffle: bool,
    seed: int,
    pin_memory: bool | None,
    drop_last: bool = False,
    sampler: Sampler[int] | None = None,
) -> CarvanaLoader:
    """A CarvanaLoader over `dataset`, its worker processes started cleanly and seeded from `seed`."""
    if workers < 0:
        raise ConfigError(f"workers {workers}: must be 0 (load in the main process) or more")
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size}: must be at least 1")
    return CarvanaLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        worker_init_fn=worker_init if workers > 0 else None,
        persistent_workers=workers > 0,
        multiprocessing_context=worker_context() if workers > 0 else None,
        # Seeds the shuffle order and each worker's torch seed (and through it the augmentation).
        generator=torch.Generator().manual_seed(seed),
    )
