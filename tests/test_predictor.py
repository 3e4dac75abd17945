"""Predictor: probabilities from a model on its device, flip TTA, raw-pixel batches, the hooks, checkpoints."""
from __future__ import annotations

import re

import pytest
import torch
from torch.utils.data import DataLoader
from training_helpers import SIDE, ellipse_dataset, tiny_config

from carvana.core.errors import CheckpointError
from carvana.core.geometry import Size
from carvana.models import build_model
from carvana.models.forward_pass import IMAGENET_MEAN, IMAGENET_STD, normalize_batch
from carvana.predict.hooks import PredictCallback, PredictState
from carvana.predict.predictor import Predictor
from carvana.run.checkpoint import load_checkpoint, save_checkpoint
from carvana.run.config import Config


def tiny_predictor(config: Config | None = None, seed: int = 0) -> Predictor:
    config = config or tiny_config()
    torch.manual_seed(seed)
    return Predictor.for_config(config, build_model(config.model, config.width), progress=False)


class RecordingPredictions(PredictCallback):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.names: list[str] = []
        self.batches: list[torch.Tensor] = []
        self.done: list[int] = []

    def on_predict_begin(self, state: PredictState) -> None:
        self.events.append("begin")
        self.total = state.total

    def on_predict_batch_end(self, state: PredictState) -> None:
        self.events.append("batch")
        self.names += state.names
        self.batches.append(state.probabilities)
        self.done.append(state.done)

    def on_predict_end(self, state: PredictState) -> None:
        self.events.append("end")

    def on_exception(self, state: PredictState, exception: BaseException) -> None:
        self.events.append(f"exception {exception}")


def test_predict_hands_each_batch_of_names_and_probabilities_to_the_callbacks():
    predictor = tiny_predictor()
    images, _ = ellipse_dataset(count=5).tensors
    names = [f"car{i}_01.jpg" for i in range(5)]
    loader = DataLoader(list(zip(images, names)), batch_size=2)
    recorder = RecordingPredictions()

    state = predictor.predict(loader, callbacks=[recorder], tta=False)

    assert recorder.events == ["begin", "batch", "batch", "batch", "end"]
    assert recorder.names == names and recorder.done == [2, 4, 5] and recorder.total == 5 == state.done
    for batch in recorder.batches:
        assert batch.dtype == torch.float32 and batch.device.type == "cpu"
        assert batch.shape[1:] == (SIDE, SIDE)
        assert 0.0 <= batch.min() and batch.max() <= 1.0
    assert [b.shape[0] for b in recorder.batches] == [2, 2, 1]


class FailingOnSecondBatch(PredictCallback):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_predict_batch_end(self, state: PredictState) -> None:
        self.events.append("batch")
        if len(self.events) == 2:
            raise OSError("disk full")

    def on_exception(self, state: PredictState, exception: BaseException) -> None:
        self.events.append(f"exception {exception}")


def test_an_error_in_a_batch_reaches_every_callbacks_clean_up_and_no_end():
    predictor = tiny_predictor()
    images, _ = ellipse_dataset(count=6).tensors
    loader = DataLoader(list(zip(images, [f"car{i}_01.jpg" for i in range(6)])), batch_size=2)
    failing, recorder = FailingOnSecondBatch(), RecordingPredictions()

    with pytest.raises(OSError, match="disk full"):
        predictor.predict(loader, callbacks=[failing, recorder])

    assert failing.events == ["batch", "batch", "exception disk full"]
    assert recorder.events == ["begin", "batch", "exception disk full"]


def test_flip_tta_is_the_mean_of_the_image_and_its_unflipped_mirror_prediction():
    predictor = tiny_predictor()
    images, _ = ellipse_dataset(count=3).tensors
    model = predictor.model.eval()

    with torch.no_grad():
        plain = torch.sigmoid(model(normalize_batch(images)))[:, 0]
        mirrored = torch.sigmoid(model(normalize_batch(images).flip(-1))).flip(-1)[:, 0]
    tta = predictor.predict_probabilities(images, tta=True)

    assert torch.allclose(tta, (plain + mirrored) / 2, atol=1e-6)
    assert not torch.allclose(tta, plain, atol=1e-4)  # the flip really was a second, different pass
    assert torch.allclose(predictor.predict_probabilities(images, tta=False), plain, atol=1e-6)


def test_tta_defaults_to_the_config():
    images, _ = ellipse_dataset(count=2).tensors
    with_tta, without = tiny_predictor(tiny_config(tta=True)), tiny_predictor(tiny_config(tta=False))

    assert torch.equal(with_tta.predict_probabilities(images), without.predict_probabilities(images, tta=True))
    assert torch.equal(without.predict_probabilities(images), with_tta.predict_probabilities(images, tta=False))


def test_photos_are_normalised_with_the_imagenet_mean_and_std():
    grey = torch.full((1, 3, 4, 6), 128, dtype=torch.uint8)
    normalised = normalize_batch(grey)
    assert normalised.dtype == torch.float32
    for channel in range(3):
        expected = (128 / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        torch.testing.assert_close(normalised[0, channel], torch.full((4, 6), expected), rtol=0, atol=1e-6)


def test_photos_other_than_uint8_pixels_are_refused():
    with pytest.raises(TypeError, match="uint8"):
        tiny_predictor().predict_probabilities(torch.zeros(1, 3, SIDE, SIDE))


def test_bf16_autocast_still_gives_float32_probabilities():
    predictor = tiny_predictor(tiny_config(amp="bf16"))
    images, _ = ellipse_dataset(count=2).tensors

    assert predictor.forward.precision.name == "bf16"
    probabilities = predictor.predict_probabilities(images)
    assert probabilities.dtype == torch.float32 and torch.isfinite(probabilities).all()


def _checkpoint_of(predictor: Predictor, config: Config, path) -> None:
    save_checkpoint(path, {"format": 1, "model_name": config.model, "width": config.width, "epoch": 1,
                           "global_step": 1, "config": config.to_dict(), "model_state": predictor.model.state_dict()})


def test_a_predictor_from_a_checkpoint_predicts_as_the_weights_it_was_saved_from(tmp_path):
    config = tiny_config()
    trained = tiny_predictor(config, seed=1)
    path = tmp_path / "best.pt"
    _checkpoint_of(trained, config, path)
    images, _ = ellipse_dataset(count=2).tensors
    expected = trained.predict_probabilities(images)
    assert not torch.equal(tiny_predictor(config, seed=0).predict_probabilities(images), expected)

    assert torch.equal(Predictor.from_checkpoint(config, path).predict_probabilities(images), expected)
    payload = load_checkpoint(path)
    path.unlink()  # a payload already read is not read again
    assert torch.equal(Predictor.from_checkpoint(config, path, payload=payload).predict_probabilities(images), expected)


def test_a_checkpoint_of_another_model_is_refused_naming_the_file(tmp_path):
    config = tiny_config()
    path = tmp_path / "best.pt"
    _checkpoint_of(tiny_predictor(config), config, path)
    other = config.replace(model="unet_original", input_size=Size(252, 252), width=0.0625)

    with pytest.raises(CheckpointError, match=re.escape(f"{path}: a checkpoint of unet1024, not of unet_original")):
        Predictor.from_checkpoint(other, path)
    with pytest.raises(CheckpointError, match="not of unet_original"):
        Predictor.from_checkpoint(other, path, payload=load_checkpoint(path))
