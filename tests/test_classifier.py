"""CarvanaClassifier: it learns, validates per image, picks devices and precisions."""
from __future__ import annotations

import re

import pytest
import torch
from training_helpers import SIDE, ellipse_dataset, loaders, tiny_config
from torch.utils.data import DataLoader

from carvana.core.device import cpu_has_native_bf16, resolve_precision, select_device
from carvana.core.errors import ConfigError
from carvana.core.geometry import Size
from carvana.models.forward_pass import normalize_batch
from carvana.models.specs import model_geometry
from carvana.predict.predictor import Predictor
from carvana.train.callbacks import Callback
from carvana.train.classifier import CarvanaClassifier, build_optimizer, build_scheduler
from carvana.train.metrics import dice_from_logits, dice_per_image


def test_overfits_a_tiny_set_of_ellipses_to_a_dice_above_095(capsys):
    classifier = CarvanaClassifier(tiny_config(lr=5e-3, batch_size=2), progress=False)
    train, valid = loaders(count=8, batch_size=2)

    state = classifier.train(train, valid, epochs=12)

    assert state.epoch == 12 and state.global_step == 48  # 4 steps of 2 images per epoch
    assert state.metrics["val_dice"] > 0.95
    assert set(state.metrics) == {"train_loss", "train_dice", "val_loss", "val_dice", "lr"}
    assert len(state.history) == 12
    assert state.history[-1]["val_loss"] < state.history[0]["val_loss"]
    summaries = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(summaries) == 12  # one line per epoch
    assert re.match(r"epoch 12/12 +train loss [\d.]+ dice [\d.]+ +val loss [\d.]+ dice [\d.]+ +lr ", summaries[-1])


def test_validation_dice_is_the_mean_of_per_image_dice_at_the_output_size():
    classifier = CarvanaClassifier(tiny_config(), progress=False)
    data = ellipse_dataset(count=6)
    images, masks = data.tensors

    metrics = classifier.validate(DataLoader(data, batch_size=4))  # batches of 4 and 2

    with torch.no_grad():
        classifier.model.eval()
        expected = dice_from_logits(classifier.model(normalize_batch(images)), masks).mean()
    assert metrics["val_dice"] == pytest.approx(float(expected), abs=1e-6)
    assert metrics["val_loss"] > 0


class RecordingValidation(Callback):
    def __init__(self) -> None:
        self.batches: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.val_dice: list[float] = []

    def on_validation_batch_end(self, state) -> None:
        batch = state.validation_batch
        self.batches.append((batch.first, batch.photos.clone(), batch.masks.clone(), batch.probabilities.clone(),
                             batch.dice.clone()))

    def on_epoch_end(self, state) -> None:
        self.val_dice.append(state.metrics["val_dice"])


def test_each_validation_batch_reaches_the_callbacks_with_its_position_and_per_image_dice():
    classifier = CarvanaClassifier(tiny_config(), progress=False)
    train, valid = loaders(count=6, batch_size=4)
    recording = RecordingValidation()

    classifier.train(train, valid, epochs=2, callbacks=[recording])

    assert [first for first, *_ in recording.batches] == [0, 4, 0, 4]  # batches of 4 and 2, each epoch
    images, masks = valid.dataset.tensors
    first_epoch = recording.batches[:2]
    assert torch.equal(torch.cat([batch_images for _, batch_images, *_ in first_epoch]), images)
    assert torch.equal(torch.cat([batch_masks for _, _, batch_masks, *_ in first_epoch]), masks[:, 0])
    probabilities = torch.cat([p for *_, p, _ in first_epoch])
    assert probabilities.shape == (6, SIDE, SIDE) and 0.0 <= probabilities.min() and probabilities.max() <= 1.0
    dice = torch.cat([d for *_, d in first_epoch])
    assert float(dice.mean()) == pytest.approx(recording.val_dice[0], abs=1e-6)
    assert torch.allclose(dice, dice_per_image(probabilities > 0.5, masks))


def test_the_validation_batch_of_the_valid_convolution_unet_crops_the_mirror_border_to_match_its_output():
    config = tiny_config(model="unet_original", input_size=Size(252, 252), width=0.0625, batch_size=2)
    geometry = model_geometry(config.model, config.input_size)
    assert (geometry.output_size.width, geometry.border) == (68, 92)
    classifier = CarvanaClassifier(config, progress=False)
    train, valid = loaders(count=2, batch_size=2, border=geometry.border, side=68)
    recording = RecordingValidation()

    classifier.train(train, valid, epochs=1, callbacks=[recording])

    (_, batch_images, _, probabilities, _), = recording.batches
    images, _ = valid.dataset.tensors
    assert batch_images.shape == (2, 3, 68, 68) and probabilities.shape == (2, 68, 68)
    assert torch.equal(batch_images, images[:, :, 92:-92, 92:-92])


def test_optimisers_and_schedulers_follow_the_config():
    model = torch.nn.Conv2d(3, 1, 1)
    sgd = build_optimizer(tiny_config(optimizer="sgd", lr=0.01, momentum=0.99), model)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.99 and sgd.defaults["lr"] == 0.01
    assert isinstance(build_optimizer(tiny_config(optimizer="rmsprop"), model), torch.optim.RMSprop)
    assert isinstance(build_optimizer(tiny_config(optimizer="adam"), model), torch.optim.Adam)
    plateau = build_scheduler(tiny_config(scheduler="plateau"), sgd)
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau) and plateau.mode == "max"
    assert build_scheduler(tiny_config(scheduler="none"), sgd) is None


def test_cosine_schedule_lowers_the_learning_rate_epoch_by_epoch():
    classifier = CarvanaClassifier(tiny_config(scheduler="cosine", epochs=3), progress=False)
    train, valid = loaders(count=4)

    state = classifier.train(train, valid)

    lrs = [entry["lr"] for entry in state.history]
    assert lrs[0] == pytest.approx(3e-3) and lrs[0] > lrs[1] > lrs[2] > 0
    assert lrs[1] == pytest.approx(3e-3 * 0.75)  # (1 + cos(pi / 3)) / 2


def test_the_cpu_is_always_a_device_and_a_missing_gpu_is_a_config_error():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="tpu"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_device("cuda")


def test_precision_on_the_cpu_is_bf16_only_with_hardware_support_and_never_fp16():
    cpu = torch.device("cpu")
    assert resolve_precision("off", cpu).dtype is None
    assert resolve_precision("bf16", cpu).dtype == torch.bfloat16
    expected = torch.bfloat16 if cpu_has_native_bf16() else None
    assert resolve_precision("auto", cpu).dtype == expected
    assert not resolve_precision("auto", cpu).needs_grad_scaler
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", cpu)


def test_training_under_bf16_autocast_on_the_cpu_gives_finite_float32_metrics():
    classifier = CarvanaClassifier(tiny_config(amp="bf16"), progress=False)
    assert classifier.forward.precision.name == "bf16" and not classifier.scaler.is_enabled()
    train, valid = loaders(count=4)

    state = classifier.train(train, valid, epochs=1)

    assert all(torch.isfinite(torch.tensor(v)) for v in state.metrics.values())
    assert Predictor(classifier.forward).predict_probabilities(valid.dataset.tensors[0][:2]).dtype == torch.float32
