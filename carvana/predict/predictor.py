"""`Predictor`: a model on its device and in its number format, turning batches of photos into probabilities.

It holds what the forward pass needs and nothing of training (no loss, optimiser or loss scaler):
the model, the device, the precision (autocast dtype or fp32), the memory format (channels_last)
and whether to average with the mirror image (flip TTA). `inputs` and `logits` are the one place
where a batch is moved to the device, normalised, laid out and run through the model; the
classifier validates through them too. `predict` streams a loader's batches through the model and
hands each one to the prediction callbacks (`carvana.predict.hooks`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from carvana.run.checkpoint import check_model, load_checkpoint, load_model_weights
from carvana.run.config import Config
from carvana.data.datasets import normalize_batch
from carvana.core.device import Precision, resolve_precision, select_device, to_memory_format, use_channels_last
from carvana.core.hooks import call_cleanup_hook, call_hook, in_hook_order
from carvana.predict.hooks import PredictCallback, PredictState


def _count(loader: Any) -> int:
    """Images in a loader's dataset (0 when it cannot say, e.g. a list of batches)."""
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return 0


class Predictor:
    """A model ready to predict: on `device`, in `precision`, optionally channels_last, with flip TTA by default or not."""

    def __init__(self, model: nn.Module, device: torch.device, precision: Precision, channels_last: bool = False,
                 tta: bool = False, progress: bool | None = None):
        """`model` is moved to `device` (in channels_last memory format when `channels_last`);
        `tta`: the default of `predict`'s; `progress`: tqdm bars (None = only on a terminal)."""
        self.device = torch.device(device)
        self.precision = precision
        self.channels_last = channels_last
        self.tta = tta
        self.progress = progress
        memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format)

    @classmethod
    def for_config(cls, config: Config, model: nn.Module, device: torch.device | str | None = None,
                   progress: bool | None = None) -> "Predictor":
        """`model` on `device` (default `config.device`), with the config's precision (`amp`),
        `channels_last` (where the device runs it) and `tta`."""
        device = device if isinstance(device, torch.device) else select_device(device or config.device)
        return cls(model, device, resolve_precision(config.amp, device),
                   channels_last=use_channels_last(config.channels_last, device), tta=config.tta, progress=progress)

    @classmethod
    def from_checkpoint(cls, config: Config, path: str | Path, payload: dict[str, Any] | None = None,
                        progress: bool | None = None) -> "Predictor":
        """A predictor of `config`'s model holding the weights of the checkpoint at `path`.

        `payload`: the file as `load_checkpoint(path)` read it, when the caller has it already, so that
        the file is read once. CheckpointError naming `path` when it holds another model's weights.
        """
        from carvana.models import build_model

        if payload is None:
            payload = load_checkpoint(path, expected_model=config.model)
        else:
            check_model(payload, path, config.model)
        predictor = cls.for_config(config, build_model(config.model, config.width), progress=progress)
        load_model_weights(predictor.model, payload, path)
        return predictor

    @property
    def precision_name(self) -> str:
        return self.precision.name

    # ------------------------------------------------------------------ the forward pass

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """A batch as the model takes it: on its device, normalised, in its memory format.

        Raw uint8 pixels (a loader made with `raw_pixels=True`) are normalised on the device;
        float batches are already normalised by the loader.
        """
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = normalize_batch(images)
        return to_memory_format(images, self.channels_last)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The model's output for a batch from `inputs`, under the precision's autocast."""
        with self.precision.autocast():
            return self.model(images)

    @torch.no_grad()
    def predict_probabilities(self, images: torch.Tensor, tta: bool | None = None) -> torch.Tensor:
        """(B, H, W) float32 probabilities on the CPU at the model's output size.

        With `tta` (default: the predictor's) the mean of the image's and its mirror image's
        probabilities, the latter flipped back.
        """
        return self._predict_on_device(images, tta).cpu()

    @torch.no_grad()
    def _predict_on_device(self, images: torch.Tensor, tta: bool | None) -> torch.Tensor:
        tta = self.tta if tta is None else tta
        self.model.eval()
        images = self.inputs(images)
        probabilities = self._forward_probabilities(images)
        if tta:
            flipped = self._forward_probabilities(images.flip(-1)).flip(-1)
            probabilities = (probabilities + flipped) / 2
        return probabilities

    def _forward_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(images).float())[:, 0]

    # ------------------------------------------------------------------ the prediction loop

    def predict(self, test_loader: Iterable, callbacks: Sequence[PredictCallback] = (),
                tta: bool | None = None) -> PredictState:
        """Predict batches of `(images, file_names)`, handing each batch to the callbacks' hooks."""
        state = PredictState(model=self.model, total=_count(test_loader))
        callbacks = in_hook_order(callbacks)
        call_hook(callbacks, "on_predict_begin", state)
        try:
            for images, names in tqdm(test_loader, desc="predict", unit="batch", disable=self._bars_disabled()):
                # Left on the model's device: the savers post-process it there (a GPU) or on the CPU.
                state.probabilities = self._predict_on_device(images, tta)
                state.names = [str(name) for name in names]
                state.done += len(state.names)
                call_hook(callbacks, "on_predict_batch_end", state)
        except BaseException:
            # Ctrl-C, a bad image, a full disk: let the savers drop their partial files.
            call_cleanup_hook(callbacks, "on_predict_interrupted", state)
            raise
        call_hook(callbacks, "on_predict_end", state)
        return state

    def _bars_disabled(self) -> bool | None:
        return None if self.progress is None else not self.progress
