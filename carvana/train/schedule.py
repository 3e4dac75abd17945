"""The optimiser and its learning-rate schedule: ReduceLROnPlateau on validation Dice, or one cosine curve.

A cosine LR is a pure function of the config, the run's planned end and the epoch (`cosine_factor`):
a resumed run needs no saved schedule, a budget's plan (`TrainingBudget.planned_epochs`, recomputed
after every epoch) moves the curve's end, and a run extended by `--epochs` follows one curve to the new end.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from carvana.models.specs import model_spec
from carvana.run.config import Config

# ReduceLROnPlateau on validation Dice: halve the LR after 2 epochs without a new best.
PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2
PLATEAU_MIN_LR = 1e-7
# After a coarse phase (progressive resizing) the cosine schedule starts a new cycle at this share
# of the base LR: the weights are already trained, the larger inputs only refine them.
FINE_LR_FACTOR = 0.5


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's U-Net), RMSprop (UNet1024 as shared on Kaggle), or Adam;
    `config.momentum` applies to SGD only, RMSprop keeps PyTorch's defaults. An encoder U-Net's encoder
    is a parameter group of its own (`"encoder": True`), at `config.encoder_lr_scale` times the LR."""
    groups = parameter_groups(config, model)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


def parameter_groups(config: Config, model: nn.Module) -> list[dict[str, Any]]:
    """The model's parameters in one group, or for an encoder U-Net the decoder's (first: the LR logged)
    then the encoder's at its own LR."""
    if not model_spec(config.model).encoder:
        return [{"params": list(model.parameters())}]
    encoder = {id(parameter) for parameter in model.encoder.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) not in encoder]},
            {"params": list(model.encoder.parameters()), "lr": base_lr(config, {"encoder": True}), "encoder": True}]


def base_lr(config: Config, group: dict[str, Any]) -> float:
    """A parameter group's LR before any schedule: `config.lr`, times `config.encoder_lr_scale` for the encoder's."""
    return config.lr * (config.encoder_lr_scale if group.get("encoder") else 1.0)


def reset_lr(optimizer: torch.optim.Optimizer, config: Config) -> None:
    """Every group at its `base_lr` (the start of a schedule, or a resume that changed --lr)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = base_lr(config, group)


def cosine_factor(config: Config, planned: int, epoch: int) -> float:
    """The share of `config.lr` that epoch `epoch + 1` trains with in a run planned to end at epoch `planned`.

    Without a coarse phase: one cycle from `config.lr` to 0 over the run. With one (C epochs): a cycle
    over the coarse phase (or over the run, if it is planned to end inside it), then a new cycle from
    `config.lr * FINE_LR_FACTOR` to 0 over the epochs after it.
    """
    coarse = config.coarse_phase_epochs
    if coarse and epoch >= coarse:  # the cycle after the coarse phase
        share, length, done = FINE_LR_FACTOR, planned - coarse, epoch - coarse
    else:  # the run's cycle, or the coarse phase's when that ends first
        share, length, done = 1.0, min(coarse or planned, planned), epoch
    return share * (1 + math.cos(math.pi * done / max(length, 1))) / 2


def cosine_schedule(optimizer: torch.optim.Optimizer, config: Config, planned: Callable[[], int],
                    epoch: int = 0) -> LambdaLR:
    """A LambdaLR along `cosine_factor` from `config.lr`, positioned after `epoch` completed epochs (the
    optimiser's LR is set to epoch `epoch + 1`'s); `planned()`: the run's planned end, read at each step."""
    for group in optimizer.param_groups:  # the base LambdaLR scales: the config's, --lr on resume included
        group["initial_lr"] = base_lr(config, group)
    return LambdaLR(optimizer, lambda done: cosine_factor(config, planned(), done), last_epoch=epoch - 1)


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer) -> Any:
    """Stepped once per epoch: `plateau` on validation Dice, `cosine` along `cosine_schedule` over the
    config's epochs (a budget's plan moves its end: see `CarvanaClassifier.train`); None for `none`."""
    if config.scheduler == "plateau":
        return ReduceLROnPlateau(optimizer, mode="max", factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE,
                                 min_lr=PLATEAU_MIN_LR)
    if config.scheduler == "cosine":
        return cosine_schedule(optimizer, config, lambda: config.epochs)
    return None
