"""TensorBoard callbacks: scalars per epoch, and validation examples drawn as error overlays.

Both callbacks of a run write through ONE `SummaryWriter` in `log_dir/run_name/`, opened when
training begins and closed when it ends or is interrupted (the seed re-opened a writer per call,
which scatters a run over many event files). Steps are epochs. A resumed run opens the writer with
`purge_step` = the first epoch it will redo, so TensorBoard drops anything an interrupted run
logged after its last checkpoint and the curves continue without doubled points.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from carvana.train.callbacks import Callback, TrainState

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


class _SharedWriters:
    """One SummaryWriter per run directory, shared by every callback that logs to it."""

    def __init__(self) -> None:
        self._open: dict[Path, tuple[SummaryWriter, int]] = {}

    def acquire(self, run_dir: Path, purge_step: int | None) -> SummaryWriter:
        key = run_dir.resolve()
        writer, users = self._open.get(key, (None, 0))
        if writer is None:
            _wait_for_a_later_file_name(run_dir)
            writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self._open[key] = (writer, users + 1)
        return writer

    def release(self, run_dir: Path) -> None:
        key = run_dir.resolve()
        writer, users = self._open[key]
        if users == 1:
            del self._open[key]
            writer.close()
        else:
            self._open[key] = (writer, users - 1)


WRITERS = _SharedWriters()


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
    def __init__(self, log_dir: str | Path, run_name: str | None = None):
        self.log_dir = Path(log_dir)
        self.run_name = run_name  # None: the classifier's run name (kept across a resume)
        self.writer: SummaryWriter | None = None
        self._run_dir: Path | None = None

    def run_dir(self, state: TrainState) -> Path:
        return self.log_dir / (self.run_name or state.run_name)

    def on_train_begin(self, state: TrainState) -> None:
        self._run_dir = self.run_dir(state)
        self.writer = WRITERS.acquire(self._run_dir, purge_step=state.epoch + 1 if state.epoch > 0 else None)
        self._begin(self.writer, state)

    def on_epoch_end(self, state: TrainState) -> None:
        assert self.writer is not None, "on_train_begin opens the writer"
        self._log_epoch(self.writer, state)
        self.writer.flush()  # an interrupted run keeps every finished epoch's curves

    def on_train_end(self, state: TrainState) -> None:
        self._close()

    def on_train_interrupted(self, state: TrainState) -> None:
        self._close()

    def _close(self) -> None:
        if self.writer is not None and self._run_dir is not None:
            self.writer = None
            WRITERS.release(self._run_dir)

    def _begin(self, writer: SummaryWriter, state: TrainState) -> None:
        pass

    def _log_epoch(self, writer: SummaryWriter, state: TrainState) -> None:
        raise NotImplementedError


class TensorBoardLogger(_TensorBoardCallback):
    """Train/val loss and Dice and the learning rate, one point per epoch."""

    def _log_epoch(self, writer: SummaryWriter, state: TrainState) -> None:
        for key, value in state.metrics.items():
            writer.add_scalar(SCALAR_TAGS.get(key, key), value, global_step=state.epoch)


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
