"""The TensorBoard logger of a run: it owns the run's `SummaryWriter`; callbacks decide what to write and when.

Lightning's split: `TensorBoardLogger` writes scalars, images, text and hyper-parameters to
`save_dir/name`; the callbacks of `carvana.train.tensorboard` write through it, open it when training
begins (a resumed run with `purge_step`: TensorBoard drops what was logged after its checkpoint),
flush it after each epoch and close it when training ends or is interrupted.

Logging never stops training. When writing fails (a full or read-only log disk, a vanished folder)
one line on stderr says so and logging to that run is off for the rest of the process, the HParams
written after training included; training and its checkpoints go on.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from carvana.core.errors import ConfigError

log = logging.getLogger(__name__)

JPEG_QUALITY = 92
_CREATED_SECOND = re.compile(r"events\.out\.tfevents\.(\d+)\.")
# The settings shown as columns of TensorBoard's HParams tab, and the results beside them.
HPARAM_FIELDS = ("preset", "model", "input_size", "width", "optimizer", "lr", "scheduler", "batch_size", "epochs",
                 "coarse_epochs", "soft_targets", "augment", "tta", "mask_cleanup", "bce_weight", "dice_weight",
                 "seed")


def _while_open(write: Callable[..., None]) -> Callable[..., None]:
    """A writing method: it does nothing while the writer is closed, and its failure turns logging off."""
    @functools.wraps(write)
    def guarded(self: TensorBoardLogger, *args: Any) -> None:
        if self.active:
            with self.guard():
                write(self, *args)
    return guarded


class TensorBoardLogger:
    """The event files of one run in `save_dir/name`; steps are epochs. `name` None: the name `open` is
    given, the classifier's run name (kept across a resume)."""

    # Run dirs whose logging failed in this process. The HParams are written after training by a
    # logger of their own (`carvana.pipeline.one_run`), which must not warn about that dir again.
    _failed: set[Path] = set()

    def __init__(self, save_dir: str | Path, name: str | None = None):
        self.save_dir = Path(save_dir)
        self.name = name
        self.log_dir: Path | None = None if name is None else self.save_dir / name
        self._writer: SummaryWriter | None = None

    @property
    def active(self) -> bool:
        """Whether the writer is open and working: a callback need not collect what would not be logged."""
        return self._writer is not None

    def open(self, run_name: str | None = None, purge_step: int | None = None) -> None:
        """Open the writer, unless it is open or logging to the run failed (then it stays off)."""
        name = self.name or run_name
        if not name:
            raise ConfigError(f"{self.save_dir}: TensorBoard needs the run's name; give the logger one, or train "
                              "a config with run_name set")
        self.log_dir = self.save_dir / name
        if self._writer is not None or self.log_dir.resolve() in self._failed:
            return
        with self.guard():
            _wait_for_a_later_file_name(self.log_dir)
            _quiet_writer_thread_errors()
            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def close(self) -> None:
        """Write what is still queued and close the writer (nothing when it is closed)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            with self.guard():
                writer.close()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """A block of logging work (drawing a picture, writing it): an error there turns logging off with one
        warning instead of stopping training."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 - logging must never stop training
            self._fail(error)

    @_while_open
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self._writer.add_scalar(tag, value, global_step=step)

    @_while_open
    def log_text(self, tag: str, text: str, step: int) -> None:
        self._writer.add_text(tag, text, global_step=step)

    @_while_open
    def log_image(self, tag: str, picture: np.ndarray, step: int) -> None:
        """`picture` (RGB uint8) as a JPEG: `add_image` would store a PNG, several times larger for a photo;
        full chroma resolution (4:4:4) keeps the one-pixel coloured error lines of a 1:1 crop sharp."""
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [
            cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
        if not ok:
            raise ValueError(f"{tag}: the picture could not be encoded as JPEG")
        image = Summary.Image(height=picture.shape[0], width=picture.shape[1], colorspace=3,
                              encoded_image_string=encoded.tobytes())
        self._add_summaries([Summary(value=[Summary.Value(tag=tag, image=image)])], step)

    @_while_open
    def flush(self) -> None:
        """Write what is queued: an interrupted run keeps every finished epoch's points."""
        self._writer.flush()

    def log_hyperparams(self, settings: dict[str, object], results: dict[str, float | None], step: int) -> None:
        """The run's settings and final results for the HParams tab, after training, in an event file of its own.

        `settings`: a Config's `to_dict()` (its `HPARAM_FIELDS` are shown); `results`: e.g.
        {"validation_dice": ...}, shown as `hparam/<name>` at `step` (the last epoch).
        """
        shown = {name: (f"{value[0]}x{value[1]}" if isinstance(value, (list, tuple)) else value)
                 for name, value in settings.items() if name in HPARAM_FIELDS and value is not None}
        metrics = {f"hparam/{name}": float(value) for name, value in results.items() if value is not None}
        self.open()
        self._add_summaries(hparams(shown, metrics))
        self.log_metrics(metrics, step)
        self.close()

    @_while_open
    def _add_summaries(self, summaries: Iterable[Summary], step: int | None = None) -> None:
        # How torch's own `add_image` and `add_hparams` write their summaries, here with ours.
        for summary in summaries:
            self._writer.file_writer.add_summary(summary, step)

    def has_scalars_at(self, step: int) -> bool:
        """Whether the run's event files hold a scalar at `step` (read with TensorBoard's own reader); when
        they cannot be read, they are taken to: a doubled point is worse than a gap."""
        try:
            events = EventAccumulator(str(self.log_dir), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
            events.Reload()
            return any(event.step == step for tag in events.Tags()["scalars"] for event in events.Scalars(tag))
        except Exception:  # noqa: BLE001 - see the docstring
            return True

    def _fail(self, error: Exception) -> None:
        """Writing failed: say so once per run dir and stop writing."""
        writer, self._writer = self._writer, None
        if self.log_dir is not None and self.log_dir.resolve() not in self._failed:
            self._failed.add(self.log_dir.resolve())
            log.warning(f"warning: TensorBoard logging to {self.log_dir} failed ({_reason(error)[:160]}); logging "
                        "is off for the rest of the run, training goes on")
        if writer is not None:
            with contextlib.suppress(Exception):  # the same failure again, already reported
                writer.close()


def _reason(error: Exception) -> str:
    """"No space left on device" for a system error; the type and first line of anything else."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _quiet_writer_thread_errors() -> None:
    """Keep the traceback of a failed TensorBoard writer thread off stderr (installed once per process).

    TensorBoard writes events from a background thread. When a write fails there (measured: a full
    tmpfs log dir), the thread stores the error, which the writer's next add or flush raises again
    (reported in one line), and then dies with it: Python's thread hook would print a 15-line
    "Exception in thread" traceback beside that line.
    """
    previous = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        thread_module = type(args.thread).__module__ if args.thread is not None else ""
        if not (thread_module.startswith("tensorboard.") and issubclass(args.exc_type, Exception)):
            previous(args)

    hook.quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _wait_for_a_later_file_name(run_dir: Path) -> None:
    """Make the next event file sort after the run's earlier ones.

    TensorBoard reads a run's event files in name order and applies a resumed run's purge_step
    only to events read before it. The names start with the creation time in whole seconds (then
    host, pid and a per-process counter, which do not sort by age), so a run resumed within the
    second its last file was created could sort first; wait for the next second then (at most one).
    """
    created = (_CREATED_SECOND.match(path.name) for path in run_dir.glob("events.out.tfevents.*"))
    newest = max((int(match[1]) for match in created if match), default=-1)
    while int(time.time()) <= newest:
        time.sleep(0.05)
