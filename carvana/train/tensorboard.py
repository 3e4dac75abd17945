"""TensorBoard callbacks: scalars per epoch, and validation examples drawn as error overlays.

Both callbacks of a run write through ONE `SummaryWriter` in `log_dir/run_name/`, opened when
training begins and closed when it ends or is interrupted (the seed re-opened a writer per call,
which scatters a run over many event files). Steps are epochs. A resumed run opens the writer with
`purge_step` = the first epoch it will redo, so TensorBoard drops anything an interrupted run
logged after its last checkpoint and the curves continue without doubled points.

Logging never stops training. When the writer fails (a full or read-only log disk, a vanished
folder) one line on stderr says so, logging is off for the rest of the run and training and its
checkpoints go on; the checkpoint callback runs first at every epoch's end anyway (`order`).
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from carvana.train.callbacks import OBSERVE, Callback, TrainState

# state.metrics key -> TensorBoard tag; train and val curves of one quantity share a section.
SCALAR_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_dice": "dice/train",
    "val_dice": "dice/val",
    "lr": "lr",
}
PREVIEW_TAG = "val_examples"

# Overlay colours (RGB in [0, 1]) over the dimmed photo.
TRUE_POSITIVE = (0.0, 1.0, 0.0)  # green: car, predicted car
FALSE_NEGATIVE = (1.0, 0.0, 0.0)  # red: car the model missed
FALSE_POSITIVE = (0.2, 0.4, 1.0)  # blue: background the model called car
TRUTH = (1.0, 0.85, 0.0)  # yellow: the true mask
DIM = 0.45  # photo brightness under the overlay
ALPHA = 0.55  # overlay opacity
LEGEND = (
    "Each row: photo | true mask (yellow) | prediction: green = car found, red = car missed, "
    "blue = background called car."
)


@dataclass
class _Shared:
    writer: SummaryWriter | None  # None once logging to the run dir has failed
    users: int


class _SharedWriters:
    """One SummaryWriter per run directory, shared by every callback that logs to it.

    A failure of the writer, reported by whichever callback meets it first, turns logging off for
    every callback of that run dir and is reported once.
    """

    def __init__(self) -> None:
        self._open: dict[Path, _Shared] = {}

    def acquire(self, run_dir: Path, purge_step: int | None) -> SummaryWriter | None:
        """The run dir's writer (opened by the first user), or None when logging there has failed."""
        key = run_dir.resolve()
        shared = self._open.get(key)
        if shared is not None:
            shared.users += 1
            return shared.writer
        shared = self._open[key] = _Shared(writer=None, users=1)
        try:
            _wait_for_a_later_file_name(run_dir)
            _quiet_writer_thread_errors()
            shared.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        except Exception as error:  # noqa: BLE001 - logging must never stop training
            _report(run_dir, error)
        except BaseException:  # Ctrl-C while opening: nobody holds it
            del self._open[key]
            raise
        return shared.writer

    def writer(self, run_dir: Path) -> SummaryWriter | None:
        shared = self._open.get(run_dir.resolve())
        return None if shared is None else shared.writer

    def fail(self, run_dir: Path, error: Exception) -> None:
        """Logging to `run_dir` failed: say so once and stop writing there."""
        shared = self._open.get(run_dir.resolve())
        if shared is None or shared.writer is None:
            return
        writer, shared.writer = shared.writer, None
        _report(run_dir, error)
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - the same failure again, already reported
            pass

    def release(self, run_dir: Path) -> None:
        key = run_dir.resolve()
        shared = self._open[key]
        shared.users -= 1
        if shared.users > 0:
            return
        try:
            if shared.writer is not None:
                shared.writer.close()  # writes what is still queued
        except Exception as error:  # noqa: BLE001 - logging must never stop training
            self.fail(run_dir, error)
        finally:
            del self._open[key]


WRITERS = _SharedWriters()


def _report(run_dir: Path, error: Exception) -> None:
    tqdm.write(f"warning: TensorBoard logging to {run_dir} failed ({_reason(error)[:160]}); logging is off for "
               "the rest of the run, training goes on", file=sys.stderr)


def _reason(error: Exception) -> str:
    """"No space left on device" for a system error; the type and first line of anything else."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


_quiet_lock = threading.Lock()


def _quiet_writer_thread_errors() -> None:
    """Keep the traceback of a failed TensorBoard writer thread off stderr.

    TensorBoard writes events from a background thread; when a write fails there, the thread
    stores the error (raised again at the writer's next add or flush, which reports it in one
    line) and then dies with it, which Python's thread hook would print as a traceback.
    """
    with _quiet_lock:
        previous = threading.excepthook
        if getattr(previous, "quiet_tensorboard", False):
            return

        def hook(args: threading.ExceptHookArgs) -> None:
            thread_module = type(args.thread).__module__ if args.thread is not None else ""
            if thread_module.startswith("tensorboard.") and issubclass(args.exc_type, Exception):
                return
            previous(args)

        hook.quiet_tensorboard = True  # type: ignore[attr-defined]
        threading.excepthook = hook


def _wait_for_a_later_file_name(run_dir: Path) -> None:
    """Make the next event file sort after the run's earlier ones.

    TensorBoard reads a run's event files in name order and applies a resumed run's purge_step
    only to events read before it. The names start with the creation time in whole seconds, so a
    run resumed within the second its last file was created (a quick test, a scripted resume)
    could sort first; wait for the next second then (at most once, at most a second).
    """
    newest = max((_created_second(path) for path in run_dir.glob("events.out.tfevents.*")), default=-1)
    while int(time.time()) <= newest:
        time.sleep(0.05)


def _created_second(path: Path) -> int:
    field = path.name.split(".")[3] if path.name.count(".") >= 3 else ""
    return int(field) if field.isdigit() else -1


class _TensorBoardCallback(Callback):
    order = OBSERVE  # after the checkpoint: a failing log disk never costs an epoch's last.pt

    def __init__(self, log_dir: str | Path, run_name: str | None = None):
        self.log_dir = Path(log_dir)
        self.run_name = run_name  # None: the classifier's run name (kept across a resume)
        self._run_dir: Path | None = None

    def run_dir(self, state: TrainState) -> Path:
        return self.log_dir / (self.run_name or state.run_name)

    @property
    def writer(self) -> SummaryWriter | None:
        """The run's writer while logging works; None before training begins and once it failed."""
        return None if self._run_dir is None else WRITERS.writer(self._run_dir)

    def on_train_begin(self, state: TrainState) -> None:
        run_dir = self.run_dir(state)
        writer = WRITERS.acquire(run_dir, purge_step=state.epoch + 1 if state.epoch > 0 else None)
        self._run_dir = run_dir
        if writer is not None:
            self._logging(self._begin, writer, state)

    def on_epoch_end(self, state: TrainState) -> None:
        writer = self.writer
        if writer is not None:
            self._logging(self._log_and_flush, writer, state)

    def on_train_end(self, state: TrainState) -> None:
        self._close()

    def on_train_interrupted(self, state: TrainState) -> None:
        self._close()

    def _log_and_flush(self, writer: SummaryWriter, state: TrainState) -> None:
        self._log_epoch(writer, state)
        writer.flush()  # an interrupted run keeps every finished epoch's curves

    def _logging(self, write: Callable[[SummaryWriter, TrainState], None], writer: SummaryWriter,
                 state: TrainState) -> None:
        assert self._run_dir is not None, "on_train_begin sets the run dir"
        try:
            write(writer, state)
        except Exception as error:  # noqa: BLE001 - logging must never stop training
            WRITERS.fail(self._run_dir, error)

    def _close(self) -> None:
        if self._run_dir is not None:
            run_dir, self._run_dir = self._run_dir, None
            WRITERS.release(run_dir)

    def _begin(self, writer: SummaryWriter, state: TrainState) -> None:
        pass

    def _log_epoch(self, writer: SummaryWriter, state: TrainState) -> None:
        raise NotImplementedError


class TensorBoardLogger(_TensorBoardCallback):
    """Train/val loss and Dice and the learning rate, one point per epoch.

    An epoch's checkpoint is written before its curves (checkpoints go first), so a run killed in
    between resumes from an epoch whose points never reached the log; a resumed run adds them
    from the checkpoint's history when the log lacks them, and the curves have no gap.
    """

    def _begin(self, writer: SummaryWriter, state: TrainState) -> None:
        if 0 < state.epoch <= len(state.history) and self._run_dir is not None:
            if not _has_scalars_at(self._run_dir, state.epoch):
                self._log_metrics(writer, state.history[state.epoch - 1], state.epoch)
                writer.flush()

    def _log_epoch(self, writer: SummaryWriter, state: TrainState) -> None:
        self._log_metrics(writer, state.metrics, state.epoch)

    @staticmethod
    def _log_metrics(writer: SummaryWriter, metrics: dict[str, float], epoch: int) -> None:
        for key, value in metrics.items():
            writer.add_scalar(SCALAR_TAGS.get(key, key), value, global_step=epoch)


def _has_scalars_at(run_dir: Path, step: int) -> bool:
    """Whether the run's event files hold a scalar at `step` (read with TensorBoard's own reader).

    When they cannot be read, they are taken to hold it: a doubled point is worse than a gap.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    try:
        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 1, "tensors": 1,
                                                               "histograms": 1, "audio": 1})
        events.Reload()
        return any(event.step == step for tag in events.Tags()["scalars"] for event in events.Scalars(tag))
    except Exception:  # noqa: BLE001 - see the docstring
        return True


class TensorBoardVisualizer(_TensorBoardCallback):
    """The first validation images each epoch: photo | true mask | prediction errors."""

    def __init__(self, log_dir: str | Path, run_name: str | None = None, max_images: int = 4):
        super().__init__(log_dir, run_name)
        self.max_images = max_images

    def _begin(self, writer: SummaryWriter, state: TrainState) -> None:
        if state.epoch == 0:
            writer.add_text(f"{PREVIEW_TAG}/legend", LEGEND, global_step=0)

    def _log_epoch(self, writer: SummaryWriter, state: TrainState) -> None:
        preview = state.preview
        if preview is None:
            return
        count = min(self.max_images, preview.images.shape[0])
        for i in range(count):
            panel = preview_panel(
                preview.images[i], preview.masks[i], preview.probabilities[i], state.config.threshold
            )
            writer.add_image(f"{PREVIEW_TAG}/{i}", panel, global_step=state.epoch, dataformats="CHW")


def _paint(base: torch.Tensor, where: torch.Tensor, colour: tuple[float, float, float]) -> torch.Tensor:
    rgb = torch.tensor(colour, dtype=base.dtype).view(3, 1, 1)
    return torch.where(where.unsqueeze(0), (1 - ALPHA) * base + ALPHA * rgb, base)


def truth_overlay(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The true mask in yellow over the dimmed photo. image (3,H,W) in [0,1], mask (H,W) 0/1."""
    return _paint(image * DIM, mask > 0.5, TRUTH)


def error_overlay(image: torch.Tensor, mask: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Hits green, misses red, false alarms blue over the dimmed photo; true background stays dim."""
    truth, predicted = mask > 0.5, prediction > 0.5
    out = image * DIM
    out = _paint(out, truth & predicted, TRUE_POSITIVE)
    out = _paint(out, truth & ~predicted, FALSE_NEGATIVE)
    return _paint(out, ~truth & predicted, FALSE_POSITIVE)


def preview_panel(image: torch.Tensor, mask: torch.Tensor, probability: torch.Tensor, threshold: float) -> torch.Tensor:
    """One (3, H, 3W) image: photo | truth overlay | error overlay."""
    image = image.float().clamp(0, 1)
    prediction = (probability >= threshold).float()
    return torch.cat([image, truth_overlay(image, mask), error_overlay(image, mask, prediction)], dim=2)
