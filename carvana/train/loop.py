"""One epoch of training and one validation pass as plain functions of what they use (forward pass, loader,
loss, optimiser, loss scaler), as in torchvision's references. Under torchrun each process passes its share
of the batches and the metrics are gathered, so every process returns the same numbers (outside torchrun
every collective of `carvana.core.distributed` returns its input: one code path)."""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import SequentialSampler
from tqdm import tqdm

from carvana.core import distributed
from carvana.core.console import bars_disabled
from carvana.core.errors import TrainingDiverged
from carvana.models.forward_pass import ForwardPass
from carvana.train.budget import TrainingBudget
from carvana.train.callbacks import TrainState, ValidationBatch
from carvana.train.metrics import dice_from_logits


def seed_epoch(seed: int, epoch: int, loader: Any, rank: int = 0) -> None:
    """Make an epoch's randomness a function of (seed, epoch) alone (and the process's rank under torchrun).

    Reseeds the global RNGs (the default sampler's, the workers' and main-process augmentation's) and a
    generator of the loader or its sampler, and calls the sampler's or dataset's `set_epoch(epoch)` (the
    DistributedSampler convention). `rank` gives each process its own augmentation (the
    DistributedSampler's shuffle is seeded by itself, alike on every process).
    """
    epoch_seed = (seed * 1_000_003 + epoch + rank * 7_919) % 2**32
    torch.manual_seed(epoch_seed)
    np.random.seed(epoch_seed)
    random.seed(epoch_seed)
    sampler = getattr(loader, "sampler", None)
    for generator in {id(g): g for g in (getattr(loader, "generator", None), getattr(sampler, "generator", None))
                      if isinstance(g, torch.Generator)}.values():
        generator.manual_seed(epoch_seed)
    for part in (sampler, getattr(loader, "dataset", None)):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def batches_per_pass(loader: Any) -> int | None:
    """Batches per pass of a loader (None when it cannot say, e.g. a generator)."""
    try:
        return len(loader)
    except TypeError:
        return None


def train_one_epoch(
    forward: ForwardPass, loader: Iterable, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, state: TrainState, epoch: int, *, threshold: float, grad_clip: float | None,
    budget: TrainingBudget, seconds: Callable[[], float], progress: bool | None, frozen: Sequence[nn.Parameter] = (),
) -> tuple[float, float, int]:
    """Train epoch `epoch`: the per-image mean loss and Dice (over every process) and the steps taken. `state`
    counts the steps and marks the weights as past its last completed epoch (`mid_epoch`); the epoch ends
    early once `budget` is spent (`seconds()`: the run's trained time). `frozen` parameters keep their values:
    their gradients are dropped before the step (the optimiser skips a parameter without one)."""
    forward.model.train()
    loss_sum = dice_sum = 0.0
    seen = step = 0
    with tqdm(loader, desc=f"epoch {epoch}/{state.epochs}", leave=False, unit="batch",
              disable=bars_disabled(progress)) as bar:
        for step, (images, masks) in enumerate(bar, start=1):
            images = forward.inputs(images)
            masks = masks.to(forward.device, non_blocking=True)
            logits = forward.logits(images)
            loss = loss_fn(logits, masks)  # float32 whatever the autocast dtype
            loss_value = float(loss.detach())
            _stop_if_diverged(loss_value, state, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # a disabled scaler (outside fp16) leaves the loss as it is
            for parameter in frozen:
                parameter.grad = None
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(forward.model.parameters(), grad_clip)
            state.mid_epoch = True
            scaler.step(optimizer)  # skipped by the scaler when fp16 gradients overflowed
            scaler.update()
            state.global_step += 1
            batch = images.shape[0]
            seen += batch
            loss_sum += loss_value * batch
            dice_sum += float(dice_from_logits(logits.detach(), masks, threshold).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", dice=f"{dice_sum / seen:.4f}")
            if budget.limited and budget.spent(state.global_step, seconds()):
                break  # the epoch ends here; it is validated and checkpointed like a full one
    if seen == 0:
        raise ValueError(f"epoch {epoch}: the training loader gave no batches")
    loss_sum, dice_sum, seen = distributed.sum_over_ranks([loss_sum, dice_sum, seen])
    # Batch norm's running statistics as rank 0 has them (the ones its checkpoint saves), everywhere.
    distributed.broadcast_module(forward.model, buffers_only=True)
    return loss_sum / seen, dice_sum / seen, step


def _stop_if_diverged(loss_value: float, state: TrainState, epoch: int, step: int) -> None:
    """`TrainingDiverged` when the loss of any process is NaN/inf, before the step moves the weights."""
    if not distributed.any_rank(not math.isfinite(loss_value)):
        return
    if math.isfinite(loss_value):
        loss_value = float("nan")  # another process's loss: the run stops as one
    kept = (f"the weights of epoch {state.epoch} are the last good ones (last.pt/best.pt are not overwritten)"
            if state.epoch else "no epoch was completed, so nothing was saved")
    raise TrainingDiverged(f"training loss became {loss_value} at epoch {epoch}, step {step} (global step "
                           f"{state.global_step + 1}); {kept}: lower --lr or set --grad-clip")


@torch.no_grad()
def evaluate(forward: ForwardPass, loader: Iterable, loss_fn: nn.Module, threshold: float, *, desc: str = "valid",
             progress: bool | None = None, on_batch: Callable[[ValidationBatch], None] | None = None,
             ) -> dict[str, float]:
    """`val_loss` (per-image mean) and `val_dice` (mean per-image Dice at the model's output size, each
    photo counted once over the processes); `on_batch` sees each batch (see `ValidationBatch`)."""
    forward.model.eval()
    geometry = forward.geometry
    loss_sum = 0.0
    dices: list[float] = []  # per image, in the loader's order
    files = _files_in_order(loader) if on_batch is not None else None
    for photos, masks in tqdm(loader, desc=desc, leave=False, unit="batch", disable=bars_disabled(progress)):
        images = forward.inputs(photos)
        masks = masks.to(forward.device, non_blocking=True)
        # The photo's part of the output: without the padding of a whole padded photo (--crop).
        logits = geometry.crop_output(forward.logits(images))
        batch, first = images.shape[0], len(dices)
        loss_sum += float(loss_fn(logits, masks)) * batch
        dice = dice_from_logits(logits, masks, threshold)
        dices.extend(dice.float().tolist())
        if on_batch is not None:
            on_batch(ValidationBatch(
                first=first, photos=geometry.crop_to_covered(photos), masks=masks.reshape(batch, *masks.shape[-2:]),
                probabilities=torch.sigmoid(logits.float()).reshape(batch, *logits.shape[-2:]), dice=dice,
                image_paths=None if files is None else files[0][first:first + batch],
                mask_paths=None if files is None else files[1][first:first + batch],
            ))
    return _gathered_metrics(loader, loss_sum, dices)


def _gathered_metrics(loader: Iterable, loss_sum: float, dices: list[float]) -> dict[str, float]:
    """The validation metrics over every process's share, alike on each: the per-image Dice of all
    shares put in the photos' order, so each photo counts once whichever process scored it."""
    order = _item_order(loader) or list(range(len(dices)))
    scored = sorted(pair for share in distributed.gather(list(zip(order, dices))) for pair in share)
    if len({index for index, _ in scored}) != len(scored):
        raise ValueError("validation: the processes' shares of the validation photos overlap (shard the "
                         "validation loader: make_valid_loader(..., shard=True))")
    loss_sum, seen = distributed.sum_over_ranks([loss_sum, len(dices)])
    if not scored:
        raise ValueError("the validation loader gave no batches")
    return {"val_loss": loss_sum / seen, "val_dice": math.fsum(dice for _, dice in scored) / len(scored)}


def _files_in_order(loader: Any) -> tuple[list[Path], list[Path]] | None:
    """The photo and mask files of a loader's items in the order it yields them: known for a dataset that
    names its files, read in a known order (`_item_order`), as `make_valid_loader`'s; else None."""
    dataset = getattr(loader, "dataset", None)
    images, masks = getattr(dataset, "image_paths", None), getattr(dataset, "mask_paths", None)
    order = _item_order(loader) if images is not None and masks is not None else None
    return None if order is None else ([images[i] for i in order], [masks[i] for i in order])


def _item_order(loader: Any) -> list[int] | None:
    """The dataset indices of a loader's items in the order it yields them (a sequential loader, or
    one rank's share: `ShardSampler.indices`); None when it cannot say."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, SequentialSampler):
        return list(range(len(loader.dataset)))
    indices = getattr(sampler, "indices", None)
    return list(indices) if isinstance(indices, list) else None
