"""`Predictor`: a model's forward pass streamed over a loader of photos, batch by batch, to the prediction callbacks.

It holds what prediction needs and nothing of training (no loss, optimiser or loss scaler): the
model's `ForwardPass` (device, precision, memory format; `carvana.models.forward_pass`) and whether
to average with the mirror image (flip TTA). `predict` streams a loader's batches through it and
hands each one to the prediction callbacks (`carvana.predict.hooks`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from carvana.core.console import bars_disabled
from carvana.core.hooks import call_cleanup_hook, call_hook, in_hook_order
from carvana.models.forward_pass import ForwardPass
from carvana.predict.hooks import PredictCallback, PredictState
from carvana.run.checkpoint import check_model, load_checkpoint, load_model_weights
from carvana.run.config import Config


def _count(loader: Any) -> int:
    """Images in a loader's dataset (0 when it cannot say, e.g. a list of batches)."""
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return 0


class Predictor:
    """A model ready to predict: its forward pass, with flip TTA by default or not."""

    def __init__(self, forward: ForwardPass, tta: bool = False, progress: bool | None = None):
        """`tta`: the default of `predict`'s; `progress`: tqdm bars (None = only on a terminal)."""
        self.forward = forward
        self.tta = tta
        self.progress = progress

    @classmethod
    def for_config(cls, config: Config, model: nn.Module, device: torch.device | str | None = None,
                   progress: bool | None = None) -> "Predictor":
        """`model` on `device` (default `config.device`), with the config's precision (`amp`), memory format
        and `tta`.

        Where `amp` or `memory_format` is `auto`, prediction takes the layout chosen for training steps of
        the same model, input size and batch (`carvana.models.fastest_layout`): the training run's answer,
        from this process or the machine's cache, timed (training steps) only when neither has it. A
        layout that trains faster predicts faster too, its forward pass being most of a step."""
        forward = ForwardPass.with_settings(model, device or config.device, config.amp, config.memory_format,
                                            config.geometry, config.batch_size, config.step_input_size)
        return cls(forward, tta=config.tta, progress=progress)

    @classmethod
    def from_checkpoint(cls, config: Config, path: str | Path, payload: dict[str, Any] | None = None,
                        progress: bool | None = None) -> "Predictor":
        """A predictor of `config`'s model holding the weights of the checkpoint at `path`.

        `payload`: the file as `load_checkpoint(path)` read it, when the caller has it already, so that
        the file is read once. CheckpointError naming `path` when it holds another model's weights.
        """
        if payload is None:
            payload = load_checkpoint(path, expected_model=config.model)
        else:
            check_model(payload, path, config.model)
        predictor = cls.for_config(config, config.new_model(), progress=progress)
        load_model_weights(predictor.model, payload, path)
        return predictor

    @property
    def model(self) -> nn.Module:
        return self.forward.model

    @property
    def device(self) -> torch.device:
        return self.forward.device

    def predict_probabilities(self, images: torch.Tensor, tta: bool | None = None) -> torch.Tensor:
        """(B, H, W) float32 probabilities of a uint8 batch, on the CPU, at the model's output size;
        `tta` defaults to the predictor's."""
        return self.forward.probabilities(images, self.tta if tta is None else tta).cpu()

    # ------------------------------------------------------------------ the prediction loop

    def predict(self, test_loader: Iterable, callbacks: Sequence[PredictCallback] = (),
                tta: bool | None = None) -> PredictState:
        """Predict batches of `(images, file_names)`, handing each batch to the callbacks' hooks."""
        return predict_in_parts([(self, test_loader)], callbacks, tta)

    def _bars_disabled(self) -> bool | None:
        return bars_disabled(self.progress)


def predict_in_parts(parts: Sequence[tuple[Predictor, Iterable]], callbacks: Sequence[PredictCallback] = (),
                     tta: bool | None = None) -> PredictState:
    """One prediction pass over several loaders, each predicted by its own predictor, for one set of
    callbacks (begun once, ended once): e.g. each fold's model on the validation cars it never saw,
    streamed into one out-of-fold file. `tta` defaults to each predictor's."""
    state = PredictState(model=parts[0][0].model, total=sum(_count(loader) for _, loader in parts))
    callbacks = in_hook_order(callbacks)
    call_hook(callbacks, "on_predict_begin", state)
    try:
        for predictor, loader in parts:
            state.model = predictor.model
            flip = predictor.tta if tta is None else tta
            for images, names in tqdm(loader, desc="predict", unit="batch", disable=predictor._bars_disabled()):
                # Left on the model's device: the savers post-process it there (a GPU) or on the CPU.
                state.probabilities = None  # the last batch's map is not kept while the next is computed
                state.probabilities = predictor.forward.probabilities(images, flip)
                state.names = [str(name) for name in names]
                state.done += len(state.names)
                call_hook(callbacks, "on_predict_batch_end", state)
    except BaseException as error:
        # Ctrl-C, a bad image, a full disk: let the savers drop their partial files.
        call_cleanup_hook(callbacks, "on_exception", state, error)
        raise
    call_hook(callbacks, "on_predict_end", state)
    return state
