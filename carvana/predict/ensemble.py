"""Ensembles: several checkpoints predicting as one model, the mean of their probabilities.

`EnsembleForward` has the interface of `carvana.models.forward_pass.ForwardPass` that `Predictor`
uses (`probabilities(images, tta)`, `device`, `model`), so `Predictor.predict`, the prediction
callbacks and the submission savers work on an ensemble unchanged: each loader batch goes through
every member in turn and only their mean is handed on. Memory stays that of one model's batch (plus
the members' weights) however many photos are predicted; each extra model costs one more forward
pass per batch (two with flip TTA).

Where the mean is taken: at the models' output size, before the up-sampling to the photos' size.
Every member must take the same input size and give the same output size (`check_same_sizes`); the
loader's batches are then the input of each of them, and because bilinear up-sampling is linear
(each full-size pixel is a fixed weighted sum of output pixels), up-sampling the mean equals the mean
of the up-sampled maps: exact, and the cheapest place to average (a small map per model instead of
a photo-sized one). Members may differ in everything else: preset, width, model, precision, TTA.
Averaging checkpoints of different input or output sizes (at full resolution, each with its own
loader) is not done: they are refused.

`ensemble_checkpoints` finds the members of `predict --ensemble RUN_DIR`: the `best.pt` of every
folder one level below it (a fold run's `fold-1/best.pt`, `fold-2/best.pt`, ...; or each run's
under `OUTPUT/models`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from carvana.core.errors import CheckpointError
from carvana.core.geometry import Geometry
from carvana.models.forward_pass import ForwardPass


@dataclass(frozen=True)
class EnsembleMember:
    """One model of an ensemble: its checkpoint file, its forward pass and whether it flips (its own TTA)."""

    path: Path
    forward: ForwardPass
    tta: bool


class EnsembleForward:
    """The members' forward passes as one: (B, H, W) probabilities that are the mean of theirs.

    All members are on one device; the batch is moved there once and run through each member in
    turn, the running sum being the only map kept between them.
    """

    def __init__(self, members: Sequence[EnsembleMember]):
        if not members:
            raise ValueError("an ensemble needs at least one model")
        devices = {member.forward.device for member in members}
        if len(devices) > 1:
            raise ValueError(f"the models of an ensemble must be on one device, not on {sorted(map(str, devices))}")
        self.members = tuple(members)
        self._models = nn.ModuleList([member.forward.model for member in self.members])

    @property
    def device(self) -> torch.device:
        return self.members[0].forward.device

    @property
    def model(self) -> nn.Module:
        """Every member's network, in the members' order."""
        return self._models

    @property
    def tta(self) -> bool:
        """Whether every member flips: the TTA setting that, passed to `probabilities`, changes nothing."""
        return all(member.tta for member in self.members)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """(B, H, W) float32 mean of the members' probabilities of a uint8 batch, at their output size, on
        their device.

        A member averages with the mirror image (flip TTA) when `tta` is set, or when it was made
        with its own TTA (`EnsembleMember.tta`, its checkpoint's recipe unless a flag overrode it).
        """
        images = images.to(self.device, non_blocking=True)
        total: torch.Tensor | None = None
        for member in self.members:
            probabilities = member.forward.probabilities(images, tta or member.tta)
            total = probabilities if total is None else total.add_(probabilities)
        assert total is not None
        return total.div_(len(self.members))


def check_same_sizes(geometries: Sequence[tuple[Path, Geometry]]) -> None:
    """CheckpointError in one line, naming two checkpoints and their sizes, unless every (checkpoint,
    geometry) takes the same input size and gives the same output size as the first."""
    first_path, first = geometries[0]
    for path, geometry in geometries[1:]:
        if (geometry.input_size, geometry.output_size) != (first.input_size, first.output_size):
            raise CheckpointError(
                f"{path} takes {_sizes(geometry)}, {first_path} takes {_sizes(first)}: the models of an "
                "ensemble must take the same input size and give the same output size (their mean is taken "
                "at the output size)")


def _sizes(geometry: Geometry) -> str:
    return f"{geometry.input_size} and gives {geometry.output_size} ({geometry.model})"


def ensemble_checkpoints(run_dir: Path, name: str) -> list[Path]:
    """The `name` files (e.g. best.pt) one level below `run_dir`, in natural order (fold-2 before fold-10);
    CheckpointError in one line when there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such folder of runs or folds to ensemble")
    found = sorted((path for path in run_dir.glob(f"*/{name}") if path.is_file()), key=_natural_key)
    if not found:
        raise CheckpointError(f"{run_dir}: no {name} one level below it (e.g. {run_dir / 'fold-1' / name}); "
                              "nothing to ensemble")
    return found


def _natural_key(path: Path) -> list[int | str]:
    """`fold-10` after `fold-2`: the digits of the parent folder's name compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.parent.name)]
