"""Ensembles: several checkpoints predicting as one model, the mean of their probabilities.

`EnsembleForward` has `ForwardPass`'s interface, so `Predictor`, the callbacks and the submission
savers take an ensemble unchanged; each batch goes through every member (memory: one batch plus the
members' weights). The mean is taken at the members' covered size when they share it (bilinear
up-sampling is linear, so that is exact and cheap), otherwise at the photos' size after each map is
up-sampled as a single model's would be. Each member gets the very input it would get alone (one per
distinct geometry), so members may differ in everything: preset, model, size, precision, TTA.
`ensemble_checkpoints` finds the `best.pt` of every folder one level below `--ensemble RUN_DIR`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from carvana.core.errors import CheckpointError
from carvana.core.geometry import Geometry, Size
from carvana.models.forward_pass import ForwardPass
from carvana.predict.postprocess import resize_probabilities


@dataclass(frozen=True)
class EnsembleMember:
    """One model of an ensemble: its checkpoint file, its forward pass and whether it flips (its own TTA)."""

    path: Path
    forward: ForwardPass
    tta: bool


class EnsembleForward:
    """The members' forward passes as one: (B, H, W) probabilities that are the mean of theirs.

    All members are on one device; the batch is moved there once and run through each member in
    turn, the running sum being the only map kept between them. `photo_size`: the photos' size,
    where members of different covered sizes are averaged (required for them).
    """

    def __init__(self, members: Sequence[EnsembleMember], photo_size: Size | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one model")
        devices = {member.forward.device for member in members}
        if len(devices) > 1:
            raise ValueError(f"the models of an ensemble must be on one device, not on {sorted(map(str, devices))}")
        geometries = [_geometry_of(member) for member in members]
        self.members = tuple(members)
        self.input_geometries = tuple(dict.fromkeys(geometries))  # the distinct ones, in the members' order
        self._input_of = [self.input_geometries.index(geometry) for geometry in geometries]
        self.at_photo_size = averages_at_photo_size(members)
        self.mean_size = photo_size if self.at_photo_size else geometries[0].covered_size
        if self.mean_size is None:
            raise ValueError("members of different covered sizes are averaged at the photos' size: pass photo_size")
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
    def probabilities(self, images: torch.Tensor | Sequence[torch.Tensor], tta: bool = False) -> torch.Tensor:
        """(B, H, W) float32 mean of the members' probabilities of a uint8 batch, on their device: at their
        covered size, or at the photos' size for members of different ones (`mean_size`).

        `images`: a batch of the one input geometry, or a batch per `input_geometries` (a test loader
        made with them). A member averages with the mirror image (flip TTA) when `tta` is set, or when
        it was made with its own TTA (`EnsembleMember.tta`, its checkpoint's recipe unless a flag overrode it).
        """
        batches = (images,) if isinstance(images, torch.Tensor) else tuple(images)
        if len(batches) != len(self.input_geometries):
            raise ValueError(f"the ensemble takes {len(self.input_geometries)} inputs per photo, got {len(batches)}")
        batches = tuple(batch.to(self.device, non_blocking=True) for batch in batches)
        total: torch.Tensor | None = None
        for member, kind in zip(self.members, self._input_of):
            probabilities = member.forward.probabilities(batches[kind], tta or member.tta)
            if self.at_photo_size:
                probabilities = resize_probabilities(probabilities, self.mean_size)
            total = probabilities if total is None else total.add_(probabilities)
        assert total is not None
        return total.div_(len(self.members))


def averages_at_photo_size(members: Sequence[EnsembleMember]) -> bool:
    """Whether these members' mean is taken at the photos' size: their outputs cover different sizes."""
    return len({_geometry_of(member).covered_size for member in members}) > 1


def _geometry_of(member: EnsembleMember) -> Geometry:
    if member.forward.geometry is None:
        raise ValueError(f"{member.path}: an ensemble member needs its geometry (ForwardPass(geometry=...))")
    return member.forward.geometry


def describe_mean(ensemble: EnsembleForward) -> str:
    """Where the ensemble's mean is taken, for its banner."""
    if ensemble.at_photo_size:
        sizes = ", ".join(str(geometry.covered_size) for geometry in ensemble.input_geometries)
        return f"at the photos' size {ensemble.mean_size} (the models cover {sizes})"
    return f"at their covered size {ensemble.mean_size}, before the up-sampling"


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
