"""TensorBoard callbacks: what a run logs and when, written through its `TensorBoardLogger`.

`MetricCurves` logs the epoch's losses, Dice and learning rate, `TensorBoardVisualizer` validation
photos drawn as error overlays. Callbacks of one run share its logger: the first to see training
begin opens it and the first to see it end closes it. They run after the checkpoint (`order`), so
a failing log disk never costs an epoch's last.pt. Steps are epochs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from carvana.core.geometry import Size
from carvana.core.hooks import OBSERVE
from carvana.data.images import read_image, read_mask
from carvana.kaggle.files import car_id
from carvana.train.callbacks import Callback, TrainState, ValidationBatch
from carvana.train.loggers import TensorBoardLogger
from carvana.train.metrics import dice_score
from carvana.train.overlays import validation_picture

# state.metrics key -> TensorBoard tag; train and val curves of one quantity share a section.
SCALAR_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_dice": "dice/train", "val_dice": "dice/val",
               "lr": "lr"}
FIXED_TAG = "val_fixed"
WORST_TAG = "val_worst"
LEGEND = (
    "Validation photos each epoch: `val_fixed/<photo>` the same photos every epoch, `val_worst/1..` the "
    "epoch's lowest Dice. Over the dimmed photo: green = car found, red = car missed, blue = background "
    "called car; on the right, the photo and the overlay of the window with the most errors at 1:1 (one "
    "screen pixel per photo pixel). Ranked by the Dice at the model's output size; the caption also gives "
    "the Dice at the photo's size."
)


class _LoggingCallback(Callback):
    order = OBSERVE  # after the checkpoint: a failing log disk never costs an epoch's last.pt

    def __init__(self, logger: TensorBoardLogger):
        self.logger = logger

    def on_train_begin(self, state: TrainState) -> None:
        # A resumed run redoes the epochs after `state.epoch`: what was logged from there on is dropped.
        self.logger.open(state.run_name, purge_step=state.epoch + 1 if state.epoch > 0 else None)

    def on_train_end(self, state: TrainState) -> None:
        self.logger.close()

    def on_exception(self, state: TrainState, exception: BaseException) -> None:
        self.logger.close()


class MetricCurves(_LoggingCallback):
    """Train/val loss and Dice and the learning rate, one point per epoch (tags: `SCALAR_TAGS`).

    An epoch's checkpoint is written before its curves (checkpoints go first), so a run killed in
    between resumes from an epoch whose points never reached the log; a resumed run adds them
    from the checkpoint's history when the log lacks them, and the curves have no gap.
    """

    def on_train_begin(self, state: TrainState) -> None:
        super().on_train_begin(state)
        if 0 < state.epoch <= len(state.history) and self.logger.active \
                and not self.logger.has_scalars_at(state.epoch):
            self._log(state.history[state.epoch - 1], state.epoch)

    def on_epoch_end(self, state: TrainState) -> None:
        self._log(state.metrics, state.epoch)

    def _log(self, metrics: dict[str, float], epoch: int) -> None:
        self.logger.log_metrics({SCALAR_TAGS.get(key, key): value for key, value in metrics.items()}, epoch)
        self.logger.flush()


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


class TensorBoardVisualizer(_LoggingCallback):
    """Each epoch, pictures of validation images: a fixed set, to follow progress, and the worst, to see failures.

    Images are ranked by the Dice the validation pass already computes; at the epoch's end each shown
    photo is read at full resolution, the prediction up-sampled by `upsample` (the submission's rule) and
    drawn by `overlays.validation_picture` (without file names or `upsample`: at the model's size).
    Tags: `val_fixed/<photo>` (first view of the first `fixed` validation cars), `val_worst/<rank>`
    (1 is the lowest Dice) and the text table `val_worst/dice`.
    """

    def __init__(self, logger: TensorBoardLogger, *, worst: int = 3, fixed: int = 3,
                 upsample: MaskUpsampler | None = None):
        super().__init__(logger)
        if worst < 0 or fixed < 0:
            raise ValueError(f"worst {worst}, fixed {fixed}: counts of images must be 0 or more")
        self.worst, self.fixed, self.upsample = worst, fixed, upsample
        self._worst: list[_Kept] = []
        self._fixed: list[_Kept] = []
        self._fixed_keys: set[str] = set()

    def on_train_begin(self, state: TrainState) -> None:
        super().on_train_begin(state)
        if state.epoch == 0:
            self.logger.log_text(f"{WORST_TAG}/legend", LEGEND, 0)

    def on_validation_batch_end(self, state: TrainState) -> None:
        batch = state.validation_batch
        if batch is None or not self.logger.active:
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

    def on_epoch_end(self, state: TrainState) -> None:
        if self.logger.active:
            with self.logger.guard():  # drawing fails like writing: logging stops, training goes on
                self._log_pictures(state)
        self._forget()

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

    def _log_pictures(self, state: TrainState) -> None:
        threshold = state.config.threshold
        for number, kept in enumerate(self._fixed, start=1):
            picture, _ = self._picture(kept, f"fixed {number}/{len(self._fixed)}", threshold)
            self.logger.log_image(f"{FIXED_TAG}/{Path(kept.name).stem}", picture, state.epoch)
        rows = []
        for rank, kept in enumerate(self._worst, start=1):
            picture, full = self._picture(kept, f"worst {rank}/{len(self._worst)}", threshold)
            self.logger.log_image(f"{WORST_TAG}/{rank}", picture, state.epoch)
            rows.append(f"| {rank} | {kept.name} | {kept.dice:.4f} | {'' if full is None else f'{full:.4f}'} |")
        if rows:
            height, width = self._worst[0].probabilities.shape
            self.logger.log_text(f"{WORST_TAG}/dice", "\n".join([
                f"| rank | image | Dice at {width}x{height} (model output) | Dice at the photo's size |",
                "|---|---|---|---|", *rows]), state.epoch)

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
