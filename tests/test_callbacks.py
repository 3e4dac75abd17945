"""Callbacks: TensorBoard curves and overlays, checkpoints that load safely, early stopping."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from training_helpers import image_events, loaders, scalar_events, tiny_config

from carvana.core.errors import CheckpointError, ConfigError
from carvana.models import build_model
from carvana.predict.predictor import Predictor
from carvana.run.checkpoint import CHECKSUM_KEY, load_checkpoint, load_model_weights, weights_checksum
from carvana.train.callbacks import Callback, TrainState
from carvana.train.classifier import CarvanaClassifier
from carvana.train.early_stopping import EarlyStopping
from carvana.train.model_checkpoint import ModelCheckpoint
from carvana.train.loggers import TensorBoardLogger
from carvana.train.tensorboard import MetricCurves, TensorBoardVisualizer

SCALAR_TAGS = {"loss/train", "loss/val", "dice/train", "dice/val", "lr"}


def test_tensorboard_gets_loss_dice_and_lr_per_epoch_and_example_overlays_in_one_event_file(tmp_path):
    config = tiny_config(tmp_path)
    classifier = CarvanaClassifier(config, progress=False)
    train, valid = loaders(count=6, batch_size=4)
    logger = TensorBoardLogger(config.log_dir, "run-a")
    callbacks = [MetricCurves(logger), TensorBoardVisualizer(logger, worst=2, fixed=1)]

    state = classifier.train(train, valid, epochs=2, callbacks=callbacks)

    run_dir = config.log_dir / "run-a"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # the logger's one writer for the run
    scalars = scalar_events(run_dir)
    assert SCALAR_TAGS <= set(scalars)
    assert all([step for step, _ in scalars[tag]] == [1, 2] for tag in SCALAR_TAGS)
    assert scalars["dice/val"][-1][1] == pytest.approx(state.metrics["val_dice"])
    assert scalars["loss/train"][0][1] == pytest.approx(state.history[0]["train_loss"])
    images = image_events(run_dir)
    # A loader without file names: its images are named by position and drawn at the model's size.
    assert set(images) == {"val_fixed/image_1", "val_worst/1", "val_worst/2"}
    assert all(steps == [1, 2] for steps in images.values())


def test_the_run_name_defaults_to_the_classifiers(tmp_path):
    config = tiny_config(tmp_path, run_name="named-run")
    classifier = CarvanaClassifier(config, progress=False)
    train, valid = loaders(count=4)

    classifier.train(train, valid, epochs=1, callbacks=[MetricCurves(TensorBoardLogger(config.log_dir))])

    assert [s for s, _ in scalar_events(config.log_dir / "named-run")["loss/val"]] == [1]


# ------------------------------------------------------------------ checkpoints


def _state(config, model, epoch: int, val_dice: float) -> TrainState:
    optimizer = torch.optim.Adam(model.parameters())
    return TrainState(
        config=config, run_name="unit", model=model, optimizer=optimizer, scheduler=None, scaler=None,
        device=torch.device("cpu"), epochs=10, epoch=epoch, global_step=epoch * 3,
        metrics={"val_dice": val_dice, "val_loss": 1 - val_dice},
    )


def test_best_pt_is_rewritten_only_when_the_monitored_metric_improves(tmp_path):
    config = tiny_config()
    model = build_model(config.model, config.width)
    checkpoint = ModelCheckpoint(tmp_path, monitor="val_dice", mode="max")
    state = _state(config, model, 0, 0.0)
    checkpoint.on_train_begin(state)
    best_epochs = []
    for epoch, dice in enumerate([0.50, 0.70, 0.60, 0.70, 0.80], start=1):
        state.epoch, state.metrics = epoch, {"val_dice": dice}
        checkpoint.on_epoch_end(state)
        assert load_checkpoint(tmp_path / "last.pt")["epoch"] == epoch
        best_epochs.append(load_checkpoint(tmp_path / "best.pt")["epoch"])

    assert best_epochs == [1, 2, 2, 2, 5]  # equal is not better
    assert checkpoint.best_model_score == pytest.approx(0.80)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["best_score"] == best["callbacks"]["ModelCheckpoint"]["best_model_score"] == pytest.approx(0.80)


def test_checkpoint_and_early_stopping_share_one_meaning_of_better(tmp_path):
    for higher in (ModelCheckpoint(tmp_path, monitor="val_dice", mode="max"), EarlyStopping(mode="max")):
        assert higher.improves(0.2, None) and higher.improves(0.6, 0.5)
        assert not higher.improves(0.5, 0.5), "equal is not better"
        assert not higher.improves(float("nan"), None) and not higher.improves(float("nan"), 0.5)
    lower = EarlyStopping(monitor="val_loss", mode="min", min_delta=0.1)
    assert lower.improves(0.3, 0.5) and not lower.improves(0.45, 0.5), "better by more than min_delta"
    assert ModelCheckpoint(tmp_path, monitor="val_loss", mode="min").improves(0.45, 0.5)
    for make in (lambda: ModelCheckpoint(tmp_path, mode="best"), lambda: EarlyStopping(mode="best")):
        with pytest.raises(ConfigError, match="mode 'best'"):
            make()


def test_min_mode_keeps_the_lowest_loss(tmp_path):
    config = tiny_config()
    state = _state(config, build_model(config.model, config.width), 0, 0.0)
    checkpoint = ModelCheckpoint(tmp_path, monitor="val_loss", mode="min", save_last=False)
    for epoch, loss in enumerate([0.5, 0.3, 0.4], start=1):
        state.epoch, state.metrics = epoch, {"val_loss": loss}
        checkpoint.on_epoch_end(state)

    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert not (tmp_path / "last.pt").exists()


def test_checkpoints_load_weights_only_and_give_the_same_outputs(tmp_path):
    config = tiny_config(tmp_path)
    classifier = CarvanaClassifier(config, progress=False)
    train, valid = loaders(count=4)
    classifier.train(train, valid, epochs=1, callbacks=[ModelCheckpoint(tmp_path / "models")])
    images = valid.dataset.tensors[0]

    raw = torch.load(tmp_path / "models" / "last.pt", weights_only=True)  # tensors and primitives only
    assert raw["model_name"] == "unet1024" and raw["width"] == 0.125 and raw["epoch"] == 1
    assert {**raw["config"], **raw["environment"]} == config.to_dict() and raw["run_name"] == "tiny"
    assert raw["history"][0]["val_dice"] == pytest.approx(raw["metrics"]["val_dice"])
    other = CarvanaClassifier(config.replace(seed=1), progress=False)
    predict, predict_other = Predictor(classifier.forward).predict_probabilities, Predictor(other.forward).predict_probabilities
    assert not torch.allclose(predict_other(images), predict(images))
    other.load_weights(tmp_path / "models" / "last.pt")
    assert torch.equal(predict_other(images), predict(images))


def test_a_corrupt_or_truncated_checkpoint_is_a_checkpoint_error_naming_the_file(tmp_path):
    config = tiny_config()
    good = tmp_path / "good.pt"
    torch.save({"model_state": build_model(config.model, config.width).state_dict()}, good)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])

    for path in (garbage, truncated):
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a carvana checkpoint"):
        load_checkpoint(good)  # a bare state dict, not one of ours
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


class Exploit:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": Exploit()}, path)  # torch.save pickles arbitrary objects

    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


def _saved_checkpoint(tmp_path: Path, **config_changes) -> Path:
    config = tiny_config(**config_changes)
    state = _state(config, build_model(config.model, config.width), 1, 0.5)
    ModelCheckpoint(tmp_path).on_epoch_end(state)
    return tmp_path / "last.pt"


def test_a_checkpoint_of_another_model_or_width_is_refused_with_the_reason(tmp_path):
    from carvana.core.geometry import Size

    original = _saved_checkpoint(tmp_path / "a", model="unet_original", input_size=Size(188, 188), width=0.0625)
    with pytest.raises(CheckpointError, match=rf"{original}: a checkpoint of unet_original, not of unet1024"):
        load_checkpoint(original, expected_model="unet1024")
    with pytest.raises(CheckpointError, match="unet_original"):
        CarvanaClassifier(tiny_config(), progress=False).load_weights(original)

    wider = _saved_checkpoint(tmp_path / "b", width=0.25)
    with pytest.raises(CheckpointError, match=rf"{wider}: weights of unet1024 width 0.25 do not fit.*shape"):
        CarvanaClassifier(tiny_config(), progress=False).resume_from(wider)
    model = build_model("unet1024", 0.125)
    with pytest.raises(CheckpointError, match="shape"):
        load_model_weights(model, load_checkpoint(wider), wider)


# ------------------------------------------------------------------ early stopping


def test_early_stopping_ends_training_after_patience_epochs_without_improvement(tmp_path, capsys):
    classifier = CarvanaClassifier(tiny_config(), progress=False)
    train, valid = loaders(count=4)
    # No Dice can improve by a whole 1.0: every epoch after the first counts as one without improvement.
    stopper = EarlyStopping(monitor="val_dice", patience=2, min_delta=1.0, mode="max")

    state = classifier.train(train, valid, epochs=10, callbacks=[stopper])

    assert state.epoch == 3 and stopper.stopped_epoch == 3 and state.should_stop
    assert "early stopping" in capsys.readouterr().out


def test_early_stopping_counts_the_epochs_before_a_resume_from_the_history():
    stopper = EarlyStopping(monitor="val_dice", patience=3, min_delta=0.01)
    config = tiny_config()
    state = _state(config, torch.nn.Conv2d(3, 1, 1), 3, 0.0)
    state.history = [{"val_dice": 0.80}, {"val_dice": 0.805}, {"val_dice": 0.79}]  # 0.805 is within min_delta

    stopper.on_train_begin(state)
    assert (stopper.best_score, stopper.wait_count) == (0.80, 2)
    state.metrics = {"val_dice": 0.809}
    stopper.on_epoch_end(state)
    assert state.should_stop


def test_the_callbacks_report_their_state_under_lightnings_names_after_a_short_training(tmp_path):
    classifier = CarvanaClassifier(tiny_config(tmp_path), progress=False)
    train, valid = loaders(count=4)
    models = tmp_path / "models"
    checkpoint = ModelCheckpoint(models)
    stopper = EarlyStopping(patience=5, min_delta=1.0)  # no epoch after the first can improve by a whole 1.0
    assert (checkpoint.best_model_score, checkpoint.best_model_path, checkpoint.last_model_path) == (None,) * 3

    state = classifier.train(train, valid, epochs=3, callbacks=[checkpoint, stopper])

    dice = [entry["val_dice"] for entry in state.history]
    assert checkpoint.best_model_score == pytest.approx(max(dice))
    assert (checkpoint.best_model_path, checkpoint.last_model_path) == (models / "best.pt", models / "last.pt")
    assert load_checkpoint(checkpoint.best_model_path)["epoch"] == dice.index(max(dice)) + 1
    assert (stopper.best_score, stopper.wait_count, stopper.stopped_epoch) == (pytest.approx(dice[0]), 2, None)
    saved = load_checkpoint(checkpoint.last_model_path)["callbacks"]  # each with this last epoch counted
    assert saved == {"ModelCheckpoint": checkpoint.state_dict(), "EarlyStopping": stopper.state_dict()}


# ------------------------------------------------------------------ failures inside callbacks


class FailsAtEpochEnd(Callback):
    """A user's callback that breaks when it sees an epoch (order left at the default)."""

    def on_epoch_end(self, state: TrainState) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_an_epochs_checkpoint_is_written_before_any_other_callback_can_fail_on_that_epoch(tmp_path):
    classifier = CarvanaClassifier(tiny_config(tmp_path), progress=False)
    train, valid = loaders(count=4)

    with pytest.raises(OSError):
        classifier.train(train, valid, epochs=2, callbacks=[FailsAtEpochEnd(), ModelCheckpoint(tmp_path / "models")])

    # best.pt is written at an epoch's end only (an interruption saves last.pt alone).
    assert [load_checkpoint(tmp_path / "models" / name)["epoch"] for name in ("last.pt", "best.pt")] == [1, 1]


class SeesHowTrainingEnds(Callback):
    def __init__(self) -> None:
        self.seen: list[object] = []

    def on_train_end(self, state: TrainState) -> None:
        self.seen.append("end")

    def on_exception(self, state: TrainState, exception: BaseException) -> None:
        self.seen.append(exception)


def test_on_exception_gets_the_error_that_stopped_training_and_on_train_end_is_not_called(tmp_path):
    classifier = CarvanaClassifier(tiny_config(tmp_path), progress=False)
    train, valid = loaders(count=4)
    sees = SeesHowTrainingEnds()

    with pytest.raises(OSError):
        classifier.train(train, valid, epochs=2, callbacks=[FailsAtEpochEnd(), sees])

    [exception] = sees.seen
    assert isinstance(exception, OSError) and exception.errno == errno.EIO


def test_a_log_dir_that_cannot_be_written_turns_logging_off_in_one_line_and_training_goes_on(tmp_path, capsys):
    config = tiny_config(tmp_path)
    blocker = tmp_path / "logs-is-a-file"
    blocker.write_text("not a folder")
    classifier = CarvanaClassifier(config, progress=False)
    train, valid = loaders(count=4)
    logger = TensorBoardLogger(blocker, "run")
    callbacks = [MetricCurves(logger), TensorBoardVisualizer(logger), ModelCheckpoint(tmp_path / "models")]

    state = classifier.train(train, valid, epochs=2, callbacks=callbacks)
    # The HParams, written after training by a logger of their own, do not say it again.
    TensorBoardLogger(blocker, "run").log_hyperparams({"lr": 0.1}, {"validation_dice": 0.5}, step=2)

    assert state.epoch == 2 and load_checkpoint(tmp_path / "models" / "last.pt")["epoch"] == 2
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"warning: TensorBoard logging to {blocker / 'run'} failed (")
    assert warnings[0].endswith("); logging is off for the rest of the run, training goes on")


def test_a_checkpoint_written_before_checksums_existed_still_loads(tmp_path):
    path = _saved_checkpoint(tmp_path)
    payload = torch.load(path, weights_only=True)
    assert CHECKSUM_KEY in payload
    del payload[CHECKSUM_KEY]
    older = tmp_path / "older.pt"
    torch.save(payload, older)

    assert load_checkpoint(older)["epoch"] == 1


def test_the_weights_checksum_covers_names_shapes_and_values_but_not_the_memory_format():
    model = build_model("unet1024", 0.125)
    state = model.state_dict()
    reference = weights_checksum(state)
    assert weights_checksum(dict(reversed(list(state.items())))) == reference
    assert weights_checksum({k: v.to(memory_format=torch.channels_last) if v.dim() == 4 else v
                             for k, v in state.items()}) == reference
    name = next(k for k, v in state.items() if v.is_floating_point())
    changed = dict(state)
    changed[name] = state[name].clone()
    changed[name].view(-1)[0] += 1
    assert weights_checksum(changed) != reference
    renamed = {("x" + k if k == name else k): v for k, v in state.items()}
    assert weights_checksum(renamed) != reference
