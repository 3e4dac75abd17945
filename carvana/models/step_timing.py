"""How long a training step of a model takes in each of several number formats and memory layouts.

`time_training_steps` (used by `carvana.models.fastest_layout`) trains a copy of the run's model per
candidate for a few steps on random data, a warm-up step first; the candidates take turns, so a moment
of contention slows all alike, and each one's fastest step is its time. The batch is cut so that all
of it takes about TARGET_SECONDS (at most LIMIT_SECONDS). The run's model and random state are untouched.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from carvana.core.device import Precision, to_memory_format
from carvana.core.geometry import Size

STEPS = 3  # timed steps of each candidate, after one warm-up step
TARGET_SECONDS = 3.0  # what the candidates' steps should take together
LIMIT_SECONDS = 30.0  # what timing may take at most, the first steps included
MIN_BATCH = 2  # batch norm needs two values of a channel where the net is deepest (1x1 at the smallest inputs)


@dataclass(frozen=True)
class Candidate:
    """One way to run the model: a number format and a memory layout."""

    precision: Precision
    channels_last: bool

    @property
    def name(self) -> str:
        return f"{self.precision.name} {'channels_last' if self.channels_last else 'NCHW'}"


class NotTimed(Exception):
    """The candidates could not be timed here (the reason is the message)."""


class _Trainer:
    """A candidate's own copy of the model with an optimiser and a random batch, ready to take a step."""

    def __init__(self, model: nn.Module, device: torch.device, candidate: Candidate, size: Size, batch: int):
        memory_format = torch.channels_last if candidate.channels_last else torch.preserve_format
        self.model: nn.Module | None = copy.deepcopy(model).to(device, memory_format=memory_format).train()
        self.optimizer: torch.optim.Optimizer | None = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.precision, self.device = candidate.precision, device
        self.scaler = candidate.precision.grad_scaler()
        generator = torch.Generator().manual_seed(0)  # not torch's own: the run's random numbers stay as they were
        images = torch.randn(batch, 3, size.height, size.width, generator=generator)
        self.images = to_memory_format(images.to(device), candidate.channels_last)

    def step(self) -> float:
        """One training step; its seconds (inf once out of memory). The loss, the logits' mean square, is
        a sliver of a step's time."""
        if self.model is None:
            return math.inf
        self._sync()
        started = time.perf_counter()
        try:
            with self.precision.autocast():
                logits = self.model(self.images)
            loss = logits.float().square().mean()
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self._sync()
        except torch.OutOfMemoryError:
            self.model = self.optimizer = None  # its memory to the others
            return math.inf
        return time.perf_counter() - started

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def time_training_steps(model: nn.Module, device: torch.device, candidates: Sequence[Candidate], size: Size,
                        batch_size: int) -> list[float]:
    """Seconds per training step of each candidate (inf for one that ran out of memory), at `size` with a
    batch of at most `batch_size`; NotTimed when even one step each would take too long."""
    started = time.perf_counter()
    smallest = min(MIN_BATCH, batch_size)
    try:
        probe = _Trainer(model, device, candidates[0], size, smallest)
        first = probe.step()  # warm-up; may include the process's first-use costs
        if math.isinf(first):
            raise NotTimed(f"out of memory with {smallest} images")
        if first * 2 > LIMIT_SECONDS:
            raise NotTimed(f"one step takes {first:.0f} s here")
        per_image = probe.step() / smallest
        del probe
        batch, steps = _plan(per_image, batch_size, len(candidates), LIMIT_SECONDS - (time.perf_counter() - started))
        times = _interleaved([_Trainer(model, device, c, size, batch) for c in candidates], steps)
    except torch.OutOfMemoryError:
        raise NotTimed(f"out of memory with {smallest} images") from None
    except (RuntimeError, ValueError) as error:  # the run's own steps will say what is wrong, in their place
        raise NotTimed(f"a step failed: {_first_line(error)}") from None
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return times


def _plan(per_image: float, batch_size: int, count: int, seconds_left: float) -> tuple[int, int]:
    """(batch, timed steps) so that `count` candidates' warm-up and timed steps take about TARGET_SECONDS
    and fit in `seconds_left`, when one image's step takes `per_image` seconds."""
    batch = min(batch_size, max(MIN_BATCH, int(TARGET_SECONDS / (count * (1 + STEPS) * per_image))))
    steps = min(STEPS, int(seconds_left / (count * batch * per_image)) - 1)
    if steps < 1:
        raise NotTimed(f"one step takes {per_image:.1f} s here")
    return batch, steps


def _interleaved(trainers: list[_Trainer], steps: int) -> list[float]:
    """Each trainer's fastest of `steps` steps, taken in turns after a warm-up step (in which oneDNN or
    cuDNN picks its kernels for the layout, number format and shape)."""
    times: list[list[float]] = [[] for _ in trainers]
    for _ in range(1 + steps):
        for trainer, seconds in zip(trainers, times):
            seconds.append(trainer.step())
    return [min(seconds[1:]) for seconds in times]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:120] if text else type(error).__name__
