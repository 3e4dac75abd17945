"""`CarvanaClassifier`: the training loop, validation and resume, with named callback hooks.

The classifier owns the model and everything that changes while it learns (optimiser, LR scheduler,
fp16 loss scaler, epoch and step counters, metrics history); callbacks observe and persist that
state (TensorBoard, checkpoints, early stopping) without the loop knowing about them, and own their
own (the best score, early stopping's counters: see `carvana.train.callbacks`).
Its `forward` (carvana.models.forward_pass) holds the model on its device, in its precision and
memory format: training and validation run the model through it, as prediction does.

Epochs are counted absolutely: `train(..., epochs=12)` on a classifier resumed at epoch 8 runs
epochs 9..12. Each epoch's randomness (shuffle order, augmentation) is seeded from (seed, epoch),
so a resumed run sees the same batches as one that never stopped.

Under torchrun (`carvana.core.distributed`) every process runs this loop on its share of the
batches, the model wrapped in DistributedDataParallel (its gradients averaged over the processes;
`self.model` stays the bare model, which is what checkpoints hold). The epoch's training loss and
Dice are summed over the processes, and validation runs on each one's share of the validation
photos with the per-image Dice gathered, each photo counted once: every process sees the same
metrics, so early stopping, the LR scheduler and the best checkpoint decide alike everywhere. A NaN
loss on any process stops all of them at the same step, and a time budget follows rank 0's clock.

Interruptions:
- Ctrl-C, or SIGTERM (raised as `process_lifetime.Terminated`): the callbacks' `on_exception`
  runs (the checkpoint keeps `last.pt` at the last COMPLETED epoch, never half an epoch, so a resume
  redoes the interrupted epoch from its start), then `TrainingInterruptedError` (a
  KeyboardInterrupt) is raised, carrying where to resume from and the exit code (130 or 143).
- A budget (`config.max_steps`, `config.max_time`; see `carvana.train.budget`): checked after every
  optimiser step and before every epoch; a budget spent mid-epoch ends that epoch early, which is
  then validated and checkpointed; `TrainState.stop_reason` says why training ended.
- A NaN/inf loss: `TrainingDiverged` naming the epoch and step, raised before that step updates
  the weights; `on_exception` runs first (as for any other error), and as the weights are mid-epoch nothing is saved:
  `last.pt` and `best.pt` keep the last good epoch.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import SequentialSampler
from tqdm import tqdm

from carvana.core import distributed
from carvana.core.console import bars_disabled
from carvana.core.errors import CheckpointError, ConfigError, TrainingDiverged
from carvana.core.hooks import call_cleanup_hook, call_hook, in_hook_order
from carvana.core.process_lifetime import EXIT_INTERRUPTED, interrupt_exit_code, stopped_by
from carvana.models.forward_pass import ForwardPass
from carvana.models.input_sizes import coarse_input_size
from carvana.run.checkpoint import Checkpoint
from carvana.run.config import Config
from carvana.train.budget import TrainingBudget, TrainingClock
from carvana.train.callbacks import Callback, TrainState, ValidationBatch, callback_states, load_callback_states
from carvana.train.losses import BCEDiceLoss
from carvana.train.metrics import dice_from_logits
from carvana.train.model_checkpoint import ModelCheckpoint, saved_callback_states

log = logging.getLogger(__name__)

# ReduceLROnPlateau on validation Dice: halve the LR after 2 epochs without a new best.
PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2
PLATEAU_MIN_LR = 1e-7
# After a coarse phase (progressive resizing) the cosine schedule starts a new cycle at this share
# of the base LR: the weights are already trained, the larger inputs only refine them.
FINE_LR_FACTOR = 0.5


@dataclass(frozen=True)
class CoarsePhase:
    """The loaders of a run's coarse phase: its first `config.coarse_phase_epochs` epochs train and
    validate on these (inputs at `coarse_input_size`) instead of the full-size ones."""

    train_loader: Iterable
    valid_loader: Iterable


class TrainingInterruptedError(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during training, after the callbacks have saved what can be resumed.

    A KeyboardInterrupt, so callers that only know Ctrl-C still stop; `resume_hint` says what to do
    and `exit_code` is the shell's code for the signal (130 Ctrl-C, 143 SIGTERM).
    """

    def __init__(self, epoch_running: int, epochs: int, last_checkpoint: Path | None, checkpoint_epoch: int,
                 cause: BaseException | None = None):
        self.epoch_running = epoch_running
        self.epochs = epochs
        self.last_checkpoint = last_checkpoint
        self.checkpoint_epoch = checkpoint_epoch
        self.exit_code = interrupt_exit_code(cause) if cause is not None else EXIT_INTERRUPTED
        self.how = stopped_by(cause) if cause is not None else "interrupted"
        super().__init__(self.resume_hint)

    @property
    def resume_hint(self) -> str:
        where = f"training {self.how} during epoch {self.epoch_running}/{self.epochs}"
        if self.last_checkpoint is None:
            return f"{where}; no epoch was completed, so there is nothing to resume"
        return (
            f"{where}; {self.last_checkpoint} holds epoch {self.checkpoint_epoch}: "
            f"continue with --resume {self.last_checkpoint}"
        )


def build_optimizer(config: Config, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's U-Net), RMSprop (UNet1024 as shared on Kaggle), or Adam.

    `config.momentum` applies to SGD only; RMSprop keeps PyTorch's defaults.
    """
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer) -> Any:
    """Stepped once per epoch: `plateau` on validation Dice, `cosine` down to 0 over `config.epochs`
    (over the coarse phase first when the run has one; see `cosine_for_run`)."""
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE, min_lr=PLATEAU_MIN_LR
        )
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.coarse_phase_epochs or config.epochs)
    return None


def cosine_cycle(config: Config, planned: int, epoch: int) -> tuple[float, int, int]:
    """(base LR, length, epochs done in it) of the cosine cycle a run planned to end at epoch `planned`
    is in after `epoch` completed epochs.

    Without a coarse phase: one cycle from `config.lr` to 0 over the run. With one (C epochs): a cycle
    over the coarse phase (or over the run, if it is planned to end inside it), then a new cycle from
    `config.lr * FINE_LR_FACTOR` to 0 over the epochs after it.
    """
    coarse = config.coarse_phase_epochs
    if not coarse:
        return config.lr, planned, epoch
    if epoch < coarse:
        return config.lr, min(coarse, planned), epoch
    return config.lr * FINE_LR_FACTOR, max(planned - coarse, 1), epoch - coarse


def cosine_for_run(optimizer: torch.optim.Optimizer, config: Config, planned: int, epoch: int) -> Any:
    """The run's cosine schedule (`cosine_cycle`), positioned after `epoch` completed epochs."""
    return cosine_at_epoch(optimizer, *cosine_cycle(config, planned, epoch))


def cosine_at_epoch(optimizer: torch.optim.Optimizer, base_lr: float, epochs: int, epoch: int) -> Any:
    """A cosine schedule from `base_lr` to 0 over `epochs`, positioned after `epoch` completed epochs.

    The LR is set to the curve's closed form at `epoch`; PyTorch's CosineAnnealingLR steps it
    along the same curve from there (its update is the ratio of consecutive closed-form values).
    """
    for group in optimizer.param_groups:
        group["initial_lr"] = base_lr
        group["lr"] = base_lr
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, last_epoch=epoch - 1)
    lr = base_lr * (1 + math.cos(math.pi * epoch / epochs)) / 2
    for group in optimizer.param_groups:
        group["lr"] = lr
    scheduler._last_lr = [lr for _ in optimizer.param_groups]  # what get_last_lr() reports
    return scheduler


def seed_epoch(seed: int, epoch: int, loader: Any, rank: int = 0) -> None:
    """Make an epoch's randomness a function of (seed, epoch) alone (and the process's rank under torchrun).

    Reseeds the global RNGs (which the default sampler, the worker seeds and main-process
    augmentation draw from) and a generator the loader or its sampler owns, and calls a
    `set_epoch(epoch)` hook of the sampler or dataset (the DistributedSampler convention) for
    randomness they keep themselves. `rank` gives each process of a torchrun its own augmentation
    (the DistributedSampler's shuffle is seeded by itself, alike on every process).
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


def _files_in_order(loader: Any) -> tuple[list[Path], list[Path]] | None:
    """The photo and mask files of a loader's items in the order it yields them; None when it cannot say.

    Known only for a loader that reads its dataset in order (no shuffling, no sampler of its own)
    from a dataset that names its files, as `make_valid_loader`'s does.
    """
    dataset = getattr(loader, "dataset", None)
    images, masks = getattr(dataset, "image_paths", None), getattr(dataset, "mask_paths", None)
    if images is None or masks is None:
        return None
    order = _item_order(loader)
    if order is None:
        return None
    return [images[i] for i in order], [masks[i] for i in order]


def _item_order(loader: Any) -> list[int] | None:
    """The dataset indices of a loader's items in the order it yields them (a sequential loader, or
    one rank's share: `ShardSampler.indices`); None when it cannot say."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, SequentialSampler):
        return list(range(len(loader.dataset)))
    indices = getattr(sampler, "indices", None)
    return list(indices) if isinstance(indices, list) else None


def _batches(loader: Any) -> int | None:
    """Batches per pass of a loader (None when it cannot say, e.g. a generator)."""
    try:
        return len(loader)
    except TypeError:
        return None


class CarvanaClassifier:
    """A U-Net with its optimiser, scheduler and counters; trains, validates and resumes."""

    def __init__(
        self,
        config: Config,
        model: nn.Module | None = None,
        device: torch.device | str | None = None,
        progress: bool | None = None,
    ):
        """`model` defaults to `build_model(config.model, config.width)` (seeded by `config.seed`);
        `device` to `config.device`; `progress`: tqdm bars (None = only on a terminal)."""
        self.config = config
        self.geometry = config.geometry
        if model is None:
            from carvana.models import build_model

            torch.manual_seed(config.seed)  # the same seed gives the same initial weights
            model = build_model(config.model, config.width)
        self.ranks = distributed.current()
        # The layout is chosen (maybe timed, on rank 0 alone) before SyncBatchNorm, which would wait for the others.
        forward = ForwardPass.with_settings(model, device or config.device, config.amp, config.memory_format,
                                            self.geometry, config.batch_size, config.step_input_size)
        if config.sync_bn and self.ranks.distributed:
            forward = forward.with_model(nn.SyncBatchNorm.convert_sync_batchnorm(forward.model))
        self.forward = forward
        self.model = self.forward.model  # the bare model, whose weights checkpoints hold
        # The forward pass that trains: through DistributedDataParallel under torchrun.
        self.train_forward = self._distributed_forward() if self.ranks.distributed else self.forward
        self.loss_fn = BCEDiceLoss(config.bce_weight, config.dice_weight)
        self.optimizer = build_optimizer(config, self.model.parameters())
        self.scheduler = build_scheduler(config, self.optimizer)
        self.scaler = self.forward.precision.grad_scaler()
        self.progress = progress
        self.run_name = config.run_name  # named by its run (carvana.run.identity); None outside one
        # Progress over the whole run (restored by resume_from):
        self.epoch = 0
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self.callback_states: dict[str, dict[str, Any]] = {}  # by state_key; given back when training begins
        self.train_seconds = 0.0  # time spent training the run, every process that trained it included
        self.epoch_steps = 0  # the steps the last completed epoch took
        self.resumed_from: Path | None = None

    @property
    def device(self) -> torch.device:
        return self.forward.device

    def _distributed_forward(self) -> ForwardPass:
        """The model wrapped in DistributedDataParallel (the process group started: `distributed.start`)."""
        if self.config.sync_bn and self.device.type != "cuda":
            raise ConfigError("--sync-bn: SyncBatchNorm needs CUDA devices; on the CPU leave it off")
        if not distributed.is_started():
            raise RuntimeError("torchrun's process group is not started (carvana.core.distributed.start)")
        wrapped = nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return self.forward.with_model(wrapped)

    # ------------------------------------------------------------------ training

    def train(
        self,
        train_loader: Iterable,
        valid_loader: Iterable,
        epochs: int | None = None,
        callbacks: Sequence[Callback] = (),
        coarse: CoarsePhase | None = None,
    ) -> TrainState:
        """Train until absolute epoch `epochs`, a budget is spent, or a callback stops it.

        `epochs` defaults to the config's cap (`config.epochs`, or none when `config.epochs_cap` is
        off and a budget alone ends the run). The returned state's `stop_reason` says why it ended.
        `coarse`: the loaders of the run's coarse phase, used for its epochs that are still to train
        (required while the run has some; see `Config.coarse_phase_epochs`).
        """
        if coarse is None and self.epoch < self.config.coarse_phase_epochs:
            raise ValueError(f"epoch {self.epoch + 1} is in the run's coarse phase "
                             f"({self.config.coarse_phase_epochs} epochs): pass its loaders as `coarse`")
        budget = TrainingBudget.of(self.config, epochs)
        steps_per_epoch = _batches(train_loader)
        clock = TrainingClock(self.train_seconds)
        callbacks = in_hook_order(callbacks)
        state = TrainState(
            config=self.config, run_name=self.run_name, model=self.model, optimizer=self.optimizer,
            scheduler=self.scheduler, scaler=self.scaler, device=self.device,
            epochs=budget.planned_epochs(self.epoch, self.global_step, self.train_seconds, steps_per_epoch),
            epoch=self.epoch, global_step=self.global_step, callbacks=callbacks, history=list(self.history),
            train_seconds=self.train_seconds, epoch_steps=self.epoch_steps,
        )
        reason = budget.stop_reason(state.epoch, state.global_step, state.train_seconds, state.epoch_steps,
                                    steps_per_epoch)
        if reason is not None:
            state.stop_reason = reason
            log.info(f"nothing to train: the run is already at epoch {state.epoch} ({reason})")
            return state
        # The curve ends where the run is planned to: a budget's plan, else the config's epochs (a run
        # cut by a budget and resumed without one goes on along the curve of its whole length).
        self._follow_plan(state, state.epochs if budget.limited else self.config.epochs)
        load_callback_states(callbacks, self.callback_states)
        call_hook(callbacks, "on_train_begin", state)
        try:
            while reason is None:
                in_coarse = coarse is not None and state.epoch < self.config.coarse_phase_epochs
                loaders = (coarse.train_loader, coarse.valid_loader) if in_coarse else (train_loader, valid_loader)
                self._run_epoch(state, state.epoch + 1, *loaders, callbacks, budget, steps_per_epoch, clock)
                if state.should_stop:
                    of = f" of {budget.epochs}" if budget.epochs is not None else ""
                    reason = f"stopped early after epoch {state.epoch}{of} (early stopping)"
                    break
                # Decided on the seconds the epoch's checkpoint holds, so a resume decides the same.
                reason = budget.stop_reason(state.epoch, state.global_step, state.train_seconds, state.epoch_steps,
                                            steps_per_epoch)
            state.stop_reason = reason
        except BaseException as error:  # Ctrl-C, SIGTERM raised as `Terminated`, a diverged loss, any error
            call_cleanup_hook(callbacks, "on_exception", state, error)
            if isinstance(error, KeyboardInterrupt):
                raise TrainingInterruptedError(
                    state.epoch + 1, state.epochs, *self._resume_point(callbacks), cause=error
                ) from None
            raise
        finally:
            self._keep_progress(state)
        call_hook(callbacks, "on_train_end", state)
        return state

    def _keep_progress(self, state: TrainState) -> None:
        self.epoch, self.global_step, self.history = state.epoch, state.global_step, list(state.history)
        self.train_seconds, self.epoch_steps = state.train_seconds, state.epoch_steps
        self.callback_states = {**self.callback_states, **callback_states(state.callbacks)}

    def _resume_point(self, callbacks: Sequence[Callback]) -> tuple[Path | None, int]:
        """The newest checkpoint the run can be resumed from and the epoch it holds: the checkpoint
        callback's last.pt once it wrote one, else the file this classifier was resumed from."""
        for callback in callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.last_model_epoch is not None:
                return callback.last_model_path, callback.last_model_epoch
        return self.resumed_from, self.epoch if self.resumed_from is not None else 0

    def _follow_plan(self, state: TrainState, planned: int) -> None:
        """Point a cosine schedule at the run's planned end (a budget's), positioned at `state.epoch`."""
        cosine = isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
        if cosine and planned > 0 and self.scheduler.T_max != cosine_cycle(self.config, planned, state.epoch)[1]:
            self.scheduler = state.scheduler = cosine_for_run(self.optimizer, self.config, planned, state.epoch)

    def _run_epoch(
        self, state: TrainState, epoch: int, train_loader: Iterable, valid_loader: Iterable,
        callbacks: Sequence[Callback], budget: TrainingBudget, steps_per_epoch: int | None, clock: TrainingClock,
    ) -> None:
        started = time.monotonic()
        lr = float(self.optimizer.param_groups[0]["lr"])  # the LR this epoch trains with
        train_loss, train_dice, steps = self._train_one_epoch(state, epoch, train_loader, budget, clock)

        def validation_batch_end(batch: ValidationBatch) -> None:
            state.validation_batch = batch
            call_hook(callbacks, "on_validation_batch_end", state)

        try:
            valid = self._evaluate(valid_loader, desc=f"valid {epoch}/{state.epochs}", on_batch=validation_batch_end)
        finally:
            state.validation_batch = None  # the batch's tensors are not kept past the pass
        state.train_seconds, state.epoch_steps = self._run_seconds(clock), steps
        planned = budget.planned_epochs(epoch, state.global_step, state.train_seconds, steps_per_epoch)
        state.epochs = planned
        cosine = isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(valid["val_dice"])
        elif cosine and (epoch == self.config.coarse_phase_epochs
                         or budget.limited and self.scheduler.T_max != cosine_cycle(self.config, planned, epoch)[1]):
            # The coarse phase's last epoch starts the next cycle; a budget's plan moves the curve's end.
            self.scheduler = state.scheduler = cosine_for_run(self.optimizer, self.config, planned, epoch)
        elif self.scheduler is not None:
            self.scheduler.step()
        state.metrics = {"train_loss": train_loss, "train_dice": train_dice, **valid, "lr": lr}
        state.history.append(dict(state.metrics))
        state.epoch, state.mid_epoch = epoch, False
        seconds = time.monotonic() - started
        size = f" at {coarse_input_size(self.config.model, self.config.input_size)}" if state.coarse_epoch else ""
        log.info(
            f"epoch {epoch}/{state.epochs}{size}  train loss {train_loss:.4f} dice {train_dice:.4f}  "
            f"val loss {valid['val_loss']:.4f} dice {valid['val_dice']:.4f}  lr {lr:.2e}  "
            f"{seconds:.1f}s ({steps / max(seconds, 1e-9):.2f} steps/s)"
        )
        call_hook(callbacks, "on_epoch_end", state)

    def _train_one_epoch(self, state: TrainState, epoch: int, loader: Iterable, budget: TrainingBudget,
                         clock: TrainingClock) -> tuple[float, float, int]:
        """One pass over `loader`, or less when the budget is spent; returns the per-image mean loss and Dice
        and the steps taken."""
        seed_epoch(self.config.seed, epoch, loader, self.ranks.rank)
        self.train_forward.model.train()
        loss_sum = dice_sum = 0.0
        seen = step = 0
        with tqdm(loader, desc=f"epoch {epoch}/{state.epochs}", leave=False, unit="batch",
                  disable=self._bars_disabled()) as bar:
            for step, (images, masks) in enumerate(bar, start=1):
                images = self.train_forward.inputs(images)
                masks = masks.to(self.device, non_blocking=True)
                logits = self.train_forward.logits(images)
                loss = self.loss_fn(logits, masks)  # float32 whatever the autocast dtype
                loss_value = float(loss.detach())
                if distributed.any_rank(not math.isfinite(loss_value)):
                    if math.isfinite(loss_value):
                        loss_value = float("nan")  # another process's loss: the run stops as one
                    kept = (f"the weights of epoch {state.epoch} are the last good ones (last.pt/best.pt are "
                            "not overwritten)" if state.epoch else "no epoch was completed, so nothing was saved")
                    raise TrainingDiverged(
                        f"training loss became {loss_value} at epoch {epoch}, step {step} (global step "
                        f"{state.global_step + 1}); {kept}: lower --lr or set --grad-clip"
                    )
                self._step(loss, state)
                batch = images.shape[0]
                seen += batch
                loss_sum += loss_value * batch
                dice_sum += float(dice_from_logits(logits.detach(), masks, self.config.threshold).sum())
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", dice=f"{dice_sum / seen:.4f}")
                if budget.limited and budget.spent(state.global_step, self._run_seconds(clock)):
                    break  # the epoch ends here; it is validated and checkpointed like a full one
        if seen == 0:
            raise ValueError(f"epoch {epoch}: the training loader gave no batches")
        if self.ranks.distributed:
            loss_sum, dice_sum, seen = distributed.sum_over_ranks([loss_sum, dice_sum, seen])
            # Batch norm's running statistics as rank 0 has them (the ones its checkpoint saves), everywhere.
            distributed.broadcast_module(self.model, buffers_only=True)
        return loss_sum / seen, dice_sum / seen, step

    def _run_seconds(self, clock: TrainingClock) -> float:
        """The run's training time so far: rank 0's clock on every process under torchrun."""
        return distributed.from_main([clock.seconds()])[0] if self.ranks.distributed else clock.seconds()

    def _step(self, loss: torch.Tensor, state: TrainState) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.config.grad_clip
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            state.mid_epoch = True
            self.scaler.step(self.optimizer)  # skipped by the scaler when fp16 gradients overflowed
            self.scaler.update()
        else:
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            state.mid_epoch = True
            self.optimizer.step()
        state.global_step += 1

    # ------------------------------------------------------------------ validation

    def validate(self, valid_loader: Iterable) -> dict[str, float]:
        """`val_loss` (per-image mean) and `val_dice` (mean per-image Dice at the model's output size)."""
        return self._evaluate(valid_loader, desc="valid")

    @torch.no_grad()
    def _evaluate(
        self, loader: Iterable, desc: str, on_batch: Callable[[ValidationBatch], None] | None = None
    ) -> dict[str, float]:
        """Validation loss and Dice; `on_batch` sees each batch (see `ValidationBatch`)."""
        self.model.eval()
        loss_sum = 0.0
        seen = 0
        dices: list[float] = []  # per image, in the loader's order
        files = _files_in_order(loader) if on_batch is not None else None
        for images, masks in tqdm(loader, desc=desc, leave=False, unit="batch", disable=self._bars_disabled()):
            photos = images
            images = self.forward.inputs(photos)
            masks = masks.to(self.device, non_blocking=True)
            # The photo's part of the output: without the padding of a whole padded photo (--crop).
            logits = self.geometry.crop_output(self.forward.logits(images))
            batch = images.shape[0]
            loss_sum += float(self.loss_fn(logits, masks)) * batch
            dice = dice_from_logits(logits, masks, self.config.threshold)
            dices.extend(dice.float().tolist())
            if on_batch is not None:
                on_batch(ValidationBatch(
                    first=seen, photos=self.geometry.crop_to_covered(photos),
                    masks=masks.reshape(batch, *masks.shape[-2:]),
                    probabilities=torch.sigmoid(logits.float()).reshape(batch, *logits.shape[-2:]), dice=dice,
                    image_paths=None if files is None else files[0][seen:seen + batch],
                    mask_paths=None if files is None else files[1][seen:seen + batch],
                ))
            seen += batch
        if self.ranks.distributed:
            return self._gathered_metrics(loader, loss_sum, dices)
        if seen == 0:
            raise ValueError("the validation loader gave no batches")
        return {"val_loss": loss_sum / seen, "val_dice": math.fsum(dices) / seen}

    def _gathered_metrics(self, loader: Iterable, loss_sum: float, dices: list[float]) -> dict[str, float]:
        """The validation metrics over every process's share (torchrun), alike on each: the per-image Dice
        of all shares put in the photos' order, so each photo counts once whichever process scored it."""
        order = _item_order(loader) or list(range(len(dices)))
        scored = sorted(pair for share in distributed.gather(list(zip(order, dices))) for pair in share)
        if len({index for index, _ in scored}) != len(scored):
            raise ValueError("validation: the processes' shares of the validation photos overlap (shard the "
                             "validation loader: make_valid_loader(..., shard=True))")
        loss_sum, seen = distributed.sum_over_ranks([loss_sum, len(dices)])
        if not scored:
            raise ValueError("the validation loader gave no batches")
        return {"val_loss": loss_sum / seen, "val_dice": math.fsum(dice for _, dice in scored) / len(scored)}

    # ------------------------------------------------------------------ checkpoints

    def load_weights(self, source: str | Path | Checkpoint) -> Checkpoint:
        """Load only the model weights of a checkpoint (a file, or one already read: not read again); returns it."""
        if isinstance(source, Checkpoint):
            source.check_model(self.config.model)
            checkpoint = source
        else:
            checkpoint = Checkpoint.load(source, expected_model=self.config.model)
        checkpoint.load_weights_into(self.model)
        return checkpoint

    def resume_from(self, source: str | Path | Checkpoint) -> dict[str, Any]:
        """Continue a run: weights, optimiser, scheduler, loss scaler, counters, history, the callbacks' states.

        An optimiser or scheduler of another kind than the checkpoint's (changed by a flag) starts
        fresh; otherwise its saved state, learning rate included, carries on. `source`: a checkpoint
        file, or one already read; returns its entries.
        """
        checkpoint = self.load_weights(source)
        path, payload = checkpoint.path, checkpoint.payload
        saved = payload["config"]
        if saved.get("optimizer") == self.config.optimizer and payload.get("optimizer_state") is not None:
            try:
                self.optimizer.load_state_dict(payload["optimizer_state"])
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{path}: the optimiser state does not fit this model ({e})") from None
        else:
            log.info(f"{path}: optimiser {saved.get('optimizer')} -> {self.config.optimizer}: starting it afresh")
        self.epoch = int(payload["epoch"])
        self._restore_schedule(saved, payload.get("scheduler_state"))
        if self.scaler is not None and payload.get("scaler_state"):
            self.scaler.load_state_dict(payload["scaler_state"])
        self.global_step = int(payload["global_step"])
        self.train_seconds = float(payload.get("train_seconds", 0.0))
        self.epoch_steps = int(payload.get("epoch_steps", 0))
        self.history = [dict(entry) for entry in payload.get("history", [])]
        self.callback_states = saved_callback_states(payload)
        self.run_name = checkpoint.run_name or self.run_name
        self.resumed_from = path
        best = "none yet" if payload.get("best_score") is None else f"{payload['best_score']:.4f}"
        log.info(f"resuming run {self.run_name} from {path}: epoch {self.epoch}, "
                 f"step {self.global_step}, best {best}")
        return payload

    def _restore_schedule(self, saved: dict[str, Any], scheduler_state: dict[str, Any] | None) -> None:
        """Continue the saved learning-rate schedule, or follow the one the config asks for now.

        Same scheduler, epochs and base LR: the saved state carries on as it was. A new base LR
        (`--lr` on resume) replaces the optimiser's. Cosine with another epoch count (a run extended
        with a larger `--epochs`) follows one curve from the base LR down to 0 over the new total,
        taken up at the current epoch, instead of restarting from the end of the old curve. A
        scheduler of another kind starts at this epoch's value of its own schedule.
        """
        same_kind = saved.get("scheduler") == self.config.scheduler and scheduler_state is not None
        same_lr = saved.get("lr") == self.config.lr
        if not same_lr or not same_kind:
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] = self.config.lr
        if self.scheduler is None:
            return
        if same_kind:
            self.scheduler.load_state_dict(scheduler_state)
            if isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and not same_lr:
                self.scheduler.base_lrs = [self.config.lr for _ in self.optimizer.param_groups]
        cosine = isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
        if cosine and (not same_kind or not same_lr or saved.get("epochs") != self.config.epochs):
            self.scheduler = cosine_for_run(self.optimizer, self.config, self.config.epochs, self.epoch)

    def _bars_disabled(self) -> bool | None:
        return bars_disabled(self.progress)
