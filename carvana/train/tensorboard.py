"""TensorBoard callbacks: scalars per epoch, and validation photos drawn as error overlays.

Both callbacks of a run write through ONE `SummaryWriter` in `log_dir/run_name/`, opened when
training begins and closed when it ends or is interrupted (a writer opened per call would
scatter a run over many event files). Steps are epochs. A resumed run opens the writer with
`purge_step` = the first epoch it will redo, so TensorBoard drops anything an interrupted run
logged after its last checkpoint and the curves continue without doubled points.

Logging never stops training. When the writer fails (a full or read-only log disk, a vanished
folder) one line on stderr says so, logging is off for the rest of the run and training and its
checkpoints go on; the checkpoint callback runs first at every epoch's end anyway (`order`).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter

from carvana.core.errors import ConfigError
from carvana.core.geometry import Size
from carvana.core.hooks import OBSERVE
from carvana.data.images import read_image, read_mask
from carvana.kaggle.files import car_id
from carvana.train.callbacks import Callback, TrainState, ValidationBatch
from carvana.train.metrics import dice_score
from carvana.train.overlays import validation_picture

log = logging.getLogger(__name__)

# state.metrics key -> TensorBoard tag; train and val curves of one quantity share a section.
SCALAR_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_dice": "dice/train",
    "val_dice": "dice/val",
    "lr": "lr",
}
FIXED_TAG = "val_fixed"
WORST_TAG = "val_worst"
JPEG_QUALITY = 92
LEGEND = (
    "Validation photos each epoch: `val_fixed/<photo>` the same photos every epoch, `val_worst/1..` the "
    "epoch's lowest Dice. Over the dimmed photo: green = car found, red = car missed, blue = background "
    "called car; on the right, the photo and the overlay of the window with the most errors at 1:1 (one "
    "screen pixel per photo pixel). Ranked by the Dice at the model's output size; the caption also gives "
    "the Dice at the photo's size."
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
        self.failed: set[Path] = set()  # run dirs whose logging failed in this process: off for the rest of it

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
        self.failed.add(run_dir.resolve())
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
    log.warning(f"warning: TensorBoard logging to {run_dir} failed ({_reason(error)[:160]}); logging is off for "
                "the rest of the run, training goes on")


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
        name = self.run_name or state.run_name
        if not name:
            raise ConfigError(f"{self.log_dir}: TensorBoard needs the run's name; give the callback one, or train "
                              "a config with run_name set")
        return self.log_dir / name

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

    def on_exception(self, state: TrainState, exception: BaseException) -> None:
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


# (probabilities at the model's output size, photo size, threshold) -> the photo-sized bool mask.
MaskUpsampler = Callable[[np.ndarray, Size, float], np.ndarray]


@dataclass
class _Kept:
    """A validation image picked for showing, with what its picture needs, on the CPU."""

    position: int  # in the validation set
    name: str  # the photo's file name, or "image_<n>" (from 1) when the loader does not name its files
    dice: float  # at the model's output size
    probabilities: np.ndarray  # (h, w) float32 at the model's output size
    mask: np.ndarray  # (h, w) uint8 0/1, the truth at that size
    image: np.ndarray  # (h, w, 3) uint8, the photo at that size
    image_path: Path | None
    mask_path: Path | None


class TensorBoardVisualizer(_TensorBoardCallback):
    """Each epoch, pictures of validation images: a fixed set, to follow progress, and the worst, to see failures.

    Ranks every validation image by its Dice at the model's output size as the validation pass
    computes it (no second pass), keeping only the images it will show. At the epoch's end each
    shown photo is read from disk at its full resolution and the prediction up-sampled to it by
    `upsample` (the pipeline passes the submission's own rule), then drawn by
    `overlays.validation_picture`: the error overlay at a readable width beside a 1:1 crop of the
    worst edge. Images of a loader that does not name its files, or without `upsample`, are drawn
    at the model's size.

    Tags: `val_fixed/<photo>` (the first photo of each of the first `fixed` validation cars, the
    same every epoch) and `val_worst/<rank>` (rank 1 is the lowest Dice); `val_worst/dice` is a
    text table of that epoch's worst photos and their Dice, which each picture's caption repeats.
    """

    def __init__(self, log_dir: str | Path, run_name: str | None = None, *, worst: int = 3, fixed: int = 3,
                 upsample: MaskUpsampler | None = None):
        super().__init__(log_dir, run_name)
        if worst < 0 or fixed < 0:
            raise ValueError(f"worst {worst}, fixed {fixed}: counts of images must be 0 or more")
        self.worst, self.fixed, self.upsample = worst, fixed, upsample
        self._worst: list[_Kept] = []
        self._fixed: list[_Kept] = []
        self._fixed_keys: set[str] = set()

    def _begin(self, writer: SummaryWriter, state: TrainState) -> None:
        if state.epoch == 0:
            writer.add_text(f"{WORST_TAG}/legend", LEGEND, global_step=0)

    def on_validation_batch_end(self, state: TrainState) -> None:
        batch = state.validation_batch
        if batch is None or self.writer is None:
            return
        if batch.first == 0:  # a new validation pass
            self._forget()
        dice = batch.dice.float().cpu().tolist()
        for i, value in enumerate(dice):
            position = batch.first + i
            name = batch.image_paths[i].name if batch.image_paths is not None else f"image_{position + 1}"
            car = car_id(name) if batch.image_paths is not None else name
            if len(self._fixed) < self.fixed and car not in self._fixed_keys:
                self._fixed_keys.add(car)
                self._fixed.append(self._keep(batch, i, position, name, value))
            if self.worst and (len(self._worst) < self.worst or (value, position) < _rank(self._worst[-1])):
                self._worst.append(self._keep(batch, i, position, name, value))
                self._worst.sort(key=_rank)
                del self._worst[self.worst:]

    def on_train_end(self, state: TrainState) -> None:
        self._forget()
        super().on_train_end(state)

    def on_exception(self, state: TrainState, exception: BaseException) -> None:
        self._forget()
        super().on_exception(state, exception)

    def _forget(self) -> None:
        self._worst, self._fixed, self._fixed_keys = [], [], set()

    @staticmethod
    def _keep(batch: ValidationBatch, i: int, position: int, name: str, dice: float) -> _Kept:
        image = batch.photos[i].permute(1, 2, 0).contiguous()
        return _Kept(
            position=position, name=name, dice=dice,
            probabilities=batch.probabilities[i].float().cpu().numpy(),
            mask=(batch.masks[i] > 0.5).to(torch.uint8).cpu().numpy(), image=image.cpu().numpy(),
            image_path=None if batch.image_paths is None else batch.image_paths[i],
            mask_path=None if batch.mask_paths is None else batch.mask_paths[i],
        )

    def _log_epoch(self, writer: SummaryWriter, state: TrainState) -> None:
        threshold = state.config.threshold
        for number, kept in enumerate(self._fixed, start=1):
            picture, _ = self._picture(kept, f"fixed {number}/{len(self._fixed)}", threshold)
            _add_jpeg(writer, f"{FIXED_TAG}/{Path(kept.name).stem}", picture, state.epoch)
        rows = []
        for rank, kept in enumerate(self._worst, start=1):
            picture, full = self._picture(kept, f"worst {rank}/{len(self._worst)}", threshold)
            _add_jpeg(writer, f"{WORST_TAG}/{rank}", picture, state.epoch)
            rows.append(f"| {rank} | {kept.name} | {kept.dice:.4f} | {'' if full is None else f'{full:.4f}'} |")
        if rows:
            height, width = self._worst[0].probabilities.shape
            writer.add_text(f"{WORST_TAG}/dice", "\n".join([
                f"| rank | image | Dice at {width}x{height} (model output) | Dice at the photo's size |",
                "|---|---|---|---|", *rows]), global_step=state.epoch)
        self._forget()

    def _picture(self, kept: _Kept, label: str, threshold: float) -> tuple[np.ndarray, float | None]:
        """The picture of one kept image and its Dice at the photo's size (None when drawn at the model's)."""
        height, width = kept.probabilities.shape
        model_dice = f"Dice {kept.dice:.4f} at {width}x{height} (model output)"
        if kept.image_path is None or kept.mask_path is None or self.upsample is None:
            predicted = kept.probabilities > threshold
            picture = validation_picture(kept.image, kept.mask, predicted, f"{label}  {kept.name}  {model_dice}")
            return picture, None
        photo = read_image(kept.image_path)
        size = Size(photo.shape[1], photo.shape[0])
        truth = read_mask(kept.mask_path, expected_size=size)
        predicted = self.upsample(kept.probabilities, size, threshold)
        full = dice_score(predicted, truth)
        caption = f"{label}  {kept.name}  {model_dice}, {full:.4f} at {size}"
        return validation_picture(photo, truth, predicted, caption), full


def _rank(kept: _Kept) -> tuple[float, int]:
    """Worst first: lowest Dice, then the earlier image."""
    return kept.dice, kept.position


def _add_jpeg(writer: SummaryWriter, tag: str, picture: np.ndarray, step: int) -> None:
    """`picture` (RGB uint8) as a JPEG image summary.

    `add_image` would store a PNG, several times larger for a photo; full chroma resolution
    (4:4:4) keeps the one-pixel coloured error lines of the 1:1 crop sharp.
    """
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [
        cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    if not ok:
        raise ValueError(f"{tag}: the picture could not be encoded as JPEG")
    image = Summary.Image(height=picture.shape[0], width=picture.shape[1], colorspace=3,
                          encoded_image_string=encoded.tobytes())
    # The call `add_image` makes, with our encoding instead of its PNG.
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


# The settings shown as columns of TensorBoard's HParams tab, and the results beside them.
HPARAM_FIELDS = ("preset", "model", "input_size", "width", "optimizer", "lr", "scheduler", "batch_size", "epochs",
                 "coarse_epochs", "soft_targets", "augment", "tta", "mask_cleanup", "bce_weight", "dice_weight",
                 "seed")


def log_hparams(log_dir: Path, run_name: str, settings: dict[str, object], results: dict[str, float],
                step: int) -> None:
    """Add the run's settings and final results to its TensorBoard run, for the HParams tab.

    `settings`: a Config's `to_dict()` (the `HPARAM_FIELDS` of it are shown); `results`: e.g.
    {"validation_dice": ..., "best_epoch_dice": ...}, shown as `hparam/<name>` at `step` (the last
    epoch). Written after training, in an event file of its own; failing to write is one line on
    stderr, never an error, and nothing is tried once the run's logging failed during training.
    """
    from torch.utils.tensorboard.summary import hparams

    run_dir = Path(log_dir) / run_name
    if run_dir.resolve() in WRITERS.failed:
        return  # logging to it failed during training, and that was said: it stays off
    shown = {name: (f"{value[0]}x{value[1]}" if isinstance(value, (list, tuple)) else value)
             for name, value in settings.items() if name in HPARAM_FIELDS and value is not None}
    metrics = {f"hparam/{name}": float(value) for name, value in results.items() if value is not None}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _wait_for_a_later_file_name(run_dir)
        writer = SummaryWriter(log_dir=str(run_dir))
        try:
            for summary in hparams(shown, metrics):
                writer.file_writer.add_summary(summary)
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, global_step=step)
        finally:
            writer.close()
    except Exception as error:  # noqa: BLE001 - the HParams tab is a view; the run's results are on disk
        log.warning(f"{run_dir}: TensorBoard hyper-parameters not written ({_reason(error)})")
