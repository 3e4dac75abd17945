"""The prediction callback interface: the hooks `Predictor.predict` calls, and the state they receive.

A prediction callback overrides only the hooks it needs; they run in the callbacks' `order`
(see `carvana.core.hooks`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from carvana.core.hooks import CONTROL


@dataclass
class PredictState:
    """What a prediction pass has done so far, with the batch just predicted."""

    model: torch.nn.Module
    total: int  # images to predict
    done: int = 0  # images predicted so far, the current batch included
    names: list[str] = field(default_factory=list)  # current batch: file names (e.g. 0004d4463b50_01.jpg)
    probabilities: torch.Tensor | None = None  # current batch: (B, H, W) float32 in [0, 1] on the model's device


class PredictCallback:
    """Base class of prediction callbacks: every hook does nothing. `order`: when its hooks run."""

    order: int = CONTROL

    def on_predict_begin(self, state: PredictState) -> None:
        pass

    def on_predict_batch_end(self, state: PredictState) -> None:
        pass

    def on_predict_end(self, state: PredictState) -> None:
        pass

    def on_exception(self, state: PredictState, exception: BaseException) -> None:
        """Prediction stopped by `exception` (Ctrl-C, a bad image, a full disk, any error); `on_predict_end`
        will not be called."""
