"""`CarvanaClassifier`: the training loop, validation and resume, with named callback hooks.

The classifier owns the model and what changes while it learns (optimiser, schedule, loss scaler,
counters, metrics history); callbacks observe and persist that state without the loop knowing them.
Epochs count absolutely (`train(epochs=12)` resumed at epoch 8 runs 9..12) and each epoch's
randomness is seeded from (seed, epoch), so a resumed run sees the batches of one that never stopped.
Under torchrun every process runs this loop on its share, the model wrapped in DDP, and all see the
same metrics, so they stop, schedule and checkpoint alike.

How training ends early: Ctrl-C or SIGTERM -> callbacks' `on_exception` (`last.pt` stays at the last
completed epoch), then `TrainingInterruptedError` with the resume point and exit code; a spent budget
(`carvana.train.budget`) ends the epoch, which is validated and saved; a NaN/inf loss raises
`TrainingDiverged` before that step changes the weights.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from carvana.core import distributed
from carvana.core.errors import CheckpointError, ConfigError
from carvana.core.hooks import call_cleanup_hook, call_hook, in_hook_order
from carvana.core.process_lifetime import EXIT_INTERRUPTED, interrupt_exit_code, stopped_by
from carvana.models.forward_pass import ForwardPass
from carvana.models.input_sizes import coarse_input_size
from carvana.models.pretrained import load_encoder_weights
from carvana.run.checkpoint import Checkpoint
from carvana.run.config import Config
from carvana.train.budget import TrainingBudget, TrainingClock
from carvana.train.callbacks import Callback, TrainState, ValidationBatch, callback_states, load_callback_states
from carvana.train.losses import BCEDiceLoss
from carvana.train.loop import batches_per_pass, evaluate, seed_epoch, train_one_epoch
from carvana.train.model_checkpoint import ModelCheckpoint, saved_callback_states
from carvana.train.schedule import build_optimizer, build_scheduler, cosine_schedule, reset_lr

log = logging.getLogger(__name__)


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
        self.epoch_running, self.epochs = epoch_running, epochs
        self.last_checkpoint, self.checkpoint_epoch = last_checkpoint, checkpoint_epoch
        self.exit_code = interrupt_exit_code(cause) if cause is not None else EXIT_INTERRUPTED
        self.how = stopped_by(cause) if cause is not None else "interrupted"
        super().__init__(self.resume_hint)

    @property
    def resume_hint(self) -> str:
        where = f"training {self.how} during epoch {self.epoch_running}/{self.epochs}"
        if self.last_checkpoint is None:
            return f"{where}; no epoch was completed, so there is nothing to resume"
        return f"{where}; {self.last_checkpoint} holds epoch {self.checkpoint_epoch}: " \
               f"continue with --resume {self.last_checkpoint}"


class CarvanaClassifier:
    """A U-Net with its optimiser, scheduler and counters; trains, validates and resumes."""

    def __init__(self, config: Config, model: nn.Module | None = None, device: torch.device | str | None = None,
                 progress: bool | None = None, pretrained: bool = False):
        """`model` defaults to `config.new_model()` (seeded by `config.seed`), its encoder from
        `config.encoder_weights` when `pretrained` (a new run's start; a resumed run loads its checkpoint
        instead); `device` defaults to `config.device`; `progress`: tqdm bars (None = only on a terminal)."""
        self.config = config
        self.geometry = config.geometry
        self.ranks = distributed.current()
        if model is None:
            torch.manual_seed(config.seed)  # the same seed gives the same initial weights
            model = config.new_model()
            if pretrained and config.encoder_weights != "none" and self.ranks.is_main:
                load_encoder_weights(model.encoder, config.encoder_weights)  # DDP hands them to the others
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
        self.optimizer = build_optimizer(config, self.model)
        self.scheduler = build_scheduler(config, self.optimizer)
        self.scaler = self.forward.precision.grad_scaler()  # disabled outside fp16
        self.progress = progress
        self.run_name = config.run_name  # named by its run (carvana.run.identity); None outside one
        # Progress over the whole run (restored by resume_from):
        self.epoch = self.global_step = 0
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

    def train(self, train_loader: Iterable, valid_loader: Iterable, epochs: int | None = None,
              callbacks: Sequence[Callback] = (), coarse: CoarsePhase | None = None) -> TrainState:
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
        steps_per_epoch = batches_per_pass(train_loader)
        planned = budget.planned_epochs(self.epoch, self.global_step, self.train_seconds, steps_per_epoch)
        # The cosine curve ends at a budget's plan, else at the config's epochs (a run cut by a budget and
        # resumed without one goes on along the curve of its whole length).
        self._start_lr_curve(planned if budget.limited else self.config.epochs)
        clock = TrainingClock(self.train_seconds)
        callbacks = in_hook_order(callbacks)
        state = TrainState(
            config=self.config, run_name=self.run_name, model=self.model, optimizer=self.optimizer,
            scheduler=self.scheduler, scaler=self.scaler, device=self.device, epochs=planned,
            epoch=self.epoch, global_step=self.global_step, callbacks=callbacks, history=list(self.history),
            train_seconds=self.train_seconds, epoch_steps=self.epoch_steps,
        )
        reason = budget.stop_reason(state.epoch, state.global_step, state.train_seconds, state.epoch_steps,
                                    steps_per_epoch)
        if reason is not None:
            state.stop_reason = reason
            log.info(f"nothing to train: the run is already at epoch {state.epoch} ({reason})")
            return state
        load_callback_states(callbacks, self.callback_states)
        call_hook(callbacks, "on_train_begin", state)
        try:
            while reason is None:
                in_coarse = coarse is not None and state.epoch < self.config.coarse_phase_epochs
                loaders = (coarse.train_loader, coarse.valid_loader) if in_coarse else (train_loader, valid_loader)
                self._run_epoch(state, *loaders, callbacks, budget, steps_per_epoch, clock)
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
                raise TrainingInterruptedError(state.epoch + 1, state.epochs, *self._resume_point(callbacks),
                                               cause=error) from None
            raise
        finally:
            self._keep_progress(state)
        call_hook(callbacks, "on_train_end", state)
        return state

    def _run_epoch(self, state: TrainState, train_loader: Iterable, valid_loader: Iterable,
                   callbacks: Sequence[Callback], budget: TrainingBudget, steps_per_epoch: int | None,
                   clock: TrainingClock) -> None:
        """Train epoch `state.epoch + 1`, validate it, step the LR schedule and report it to the callbacks."""
        epoch, started = state.epoch + 1, time.monotonic()
        lr = float(self.optimizer.param_groups[0]["lr"])  # the LR this epoch trains with
        seed_epoch(self.config.seed, epoch, train_loader, self.ranks.rank)
        train_loss, train_dice, steps = train_one_epoch(
            self.train_forward, train_loader, self.loss_fn, self.optimizer, self.scaler, state, epoch,
            threshold=self.config.threshold, grad_clip=self.config.grad_clip, budget=budget,
            seconds=partial(self._run_seconds, clock), progress=self.progress, frozen=self._frozen(epoch))
        try:
            valid = evaluate(self.forward, valid_loader, self.loss_fn, self.config.threshold,
                             desc=f"valid {epoch}/{state.epochs}", progress=self.progress,
                             on_batch=partial(_validation_batch_end, state, callbacks))
        finally:
            state.validation_batch = None  # the batch's tensors are not kept past the pass
        state.train_seconds, state.epoch_steps = self._run_seconds(clock), steps
        state.epochs = budget.planned_epochs(epoch, state.global_step, state.train_seconds, steps_per_epoch)
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(valid["val_dice"])
        elif self.scheduler is not None:  # cosine: the LR of the next epoch, on the curve to the run's plan
            self.lr_curve_end = state.epochs if budget.limited else self.config.epochs
            self.scheduler.step()
        state.metrics = {"train_loss": train_loss, "train_dice": train_dice, **valid, "lr": lr}
        state.history.append(dict(state.metrics))
        state.epoch, state.mid_epoch = epoch, False
        seconds = time.monotonic() - started
        size = f" at {coarse_input_size(self.config.model, self.config.input_size)}" if state.coarse_epoch else ""
        log.info(f"epoch {epoch}/{state.epochs}{size}  train loss {train_loss:.4f} dice {train_dice:.4f}  "
                 f"val loss {valid['val_loss']:.4f} dice {valid['val_dice']:.4f}  lr {lr:.2e}  "
                 f"{seconds:.1f}s ({steps / max(seconds, 1e-9):.2f} steps/s)")
        call_hook(callbacks, "on_epoch_end", state)

    def _frozen(self, epoch: int) -> list[nn.Parameter]:
        """The parameters epoch `epoch` leaves as they are: the encoder's in its first `encoder_freeze_epochs`."""
        return list(self.model.encoder.parameters()) if epoch <= self.config.encoder_freeze_epochs else []

    def _run_seconds(self, clock: TrainingClock) -> float:
        """The run's training time so far: rank 0's clock on every process under torchrun."""
        return distributed.from_main([clock.seconds()])[0]

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

    def _start_lr_curve(self, end: int) -> None:
        """A cosine schedule at the LR of epoch `self.epoch + 1` on the curve ending at epoch `end` (moved
        by `lr_curve_end` later): the epoch decides the LR, nothing of an earlier schedule is needed."""
        self.lr_curve_end = end
        if self.config.scheduler == "cosine":
            self.scheduler = cosine_schedule(self.optimizer, self.config, lambda: self.lr_curve_end, self.epoch)

    # ------------------------------------------------------------------ validation and checkpoints

    def validate(self, valid_loader: Iterable) -> dict[str, float]:
        """`val_loss` (per-image mean) and `val_dice` (mean per-image Dice at the model's output size)."""
        return evaluate(self.forward, valid_loader, self.loss_fn, self.config.threshold, progress=self.progress)

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

        An optimiser of another kind than the checkpoint's (changed by a flag) starts fresh; otherwise
        its saved state carries on. `source`: a checkpoint file, or one already read; returns its entries.
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
        if payload.get("scaler_state"):  # none saved without fp16; a disabled scaler ignores one
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
        """The LR the next epoch trains with: a plateau run's saved state carries on (its reduced LR too,
        unless `--lr` or `--encoder-lr-scale` changed); cosine: the epoch decides, on the curve to the config's
        epochs (a saved cosine state, a CosineAnnealingLR's in older checkpoints, is ignored); else the config's LR."""
        continued = saved.get("scheduler") == "plateau" and scheduler_state is not None
        if continued and isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.load_state_dict(scheduler_state)
        changed = any(saved.get(name, 1.0) != getattr(self.config, name) for name in ("lr", "encoder_lr_scale"))
        if not continued or changed:
            reset_lr(self.optimizer, self.config)
        self._start_lr_curve(self.config.epochs)


def _validation_batch_end(state: TrainState, callbacks: Sequence[Callback], batch: ValidationBatch) -> None:
    state.validation_batch = batch
    call_hook(callbacks, "on_validation_batch_end", state)
