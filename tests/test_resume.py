"""Resuming, Ctrl-C and diverged losses: a run can always continue from its last complete epoch."""
from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import pytest
import torch
from training_helpers import InterruptingLoader, loaders, same_weights, scalar_events, tiny_config, weights

from carvana.core.errors import TrainingDiverged
from carvana.core.hooks import OBSERVE
from carvana.run.checkpoint import CHECKSUM_KEY, load_checkpoint, save_checkpoint
from carvana.train.callbacks import Callback, TrainState
from carvana.train.classifier import CarvanaClassifier, TrainingInterruptedError
from carvana.train.early_stopping import EarlyStopping
from carvana.train.model_checkpoint import ModelCheckpoint
from carvana.train.loggers import TensorBoardLogger
from carvana.train.tensorboard import MetricCurves, TensorBoardVisualizer

pytestmark = pytest.mark.reliability
TAGS = ("loss/train", "loss/val", "dice/train", "dice/val", "lr")


def _callbacks(tmp_path: Path, config) -> list[Callback]:
    logger = TensorBoardLogger(config.log_dir)
    return [
        MetricCurves(logger),
        TensorBoardVisualizer(logger, worst=2, fixed=1),
        ModelCheckpoint(tmp_path / "models"),
        EarlyStopping(patience=5),
    ]


def _checkpoint(callbacks: list[Callback]) -> ModelCheckpoint:
    return next(callback for callback in callbacks if isinstance(callback, ModelCheckpoint))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_epochs_then_a_resumed_third_equal_three_epochs_in_one_go(tmp_path):
    config = tiny_config(scheduler="plateau", run_name="resumed")
    train, valid = loaders(count=8, batch_size=4)

    straight_config = config.replace(log_dir=tmp_path / "a" / "logs")
    straight = CarvanaClassifier(straight_config.replace(run_name="straight"), progress=False)
    straight_callbacks = _callbacks(tmp_path / "a", straight_config)
    end = straight.train(train, valid, epochs=3, callbacks=straight_callbacks)

    split_config = config.replace(log_dir=tmp_path / "b" / "logs")
    first = CarvanaClassifier(split_config, progress=False)
    first.train(train, valid, epochs=2, callbacks=_callbacks(tmp_path / "b", split_config))
    second = CarvanaClassifier(split_config.replace(run_name="a-new-name"), progress=False)
    second.resume_from(tmp_path / "b" / "models" / "last.pt")
    assert (second.epoch, second.global_step, second.run_name) == (2, 4, "resumed")
    resumed_callbacks = _callbacks(tmp_path / "b", split_config)
    resumed = second.train(train, valid, epochs=3, callbacks=resumed_callbacks)

    assert (resumed.epoch, resumed.global_step) == (end.epoch, end.global_step) == (3, 6)
    best_score = _checkpoint(straight_callbacks).best_model_score
    assert _checkpoint(resumed_callbacks).best_model_score == pytest.approx(best_score)
    assert [h["val_dice"] for h in resumed.history] == pytest.approx([h["val_dice"] for h in end.history])
    assert same_weights(weights(second.model), weights(straight.model))  # same batches, same optimiser state
    saved = load_checkpoint(tmp_path / "b" / "models" / "last.pt")
    assert (saved["epoch"], saved["global_step"], len(saved["history"])) == (3, 6, 3)
    best = load_checkpoint(tmp_path / "b" / "models" / "best.pt")
    assert best["best_score"] == pytest.approx(best_score)

    straight_scalars = scalar_events(tmp_path / "a" / "logs" / "straight")
    resumed_scalars = scalar_events(tmp_path / "b" / "logs" / "resumed")
    for tag in TAGS:
        assert [step for step, _ in resumed_scalars[tag]] == [1, 2, 3]
        assert [v for _, v in resumed_scalars[tag]] == pytest.approx([v for _, v in straight_scalars[tag]])


class CopyCheckpointAt(Callback):
    """Keeps a copy of last.pt as it was after `epoch` (runs after ModelCheckpoint)."""

    def __init__(self, source: Path, target: Path, epoch: int):
        self.source, self.target, self.epoch = source, target, epoch

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch == self.epoch:
            shutil.copyfile(self.source, self.target)


def test_resuming_an_older_checkpoint_replaces_the_curves_logged_after_it(tmp_path):
    config = tiny_config(tmp_path)
    train, valid = loaders(count=4)
    models = tmp_path / "models"
    classifier = CarvanaClassifier(config, progress=False)
    classifier.train(train, valid, epochs=3, callbacks=[
        MetricCurves(TensorBoardLogger(config.log_dir)), ModelCheckpoint(models),
        CopyCheckpointAt(models / "last.pt", tmp_path / "epoch2.pt", 2),
    ])

    again = CarvanaClassifier(config, progress=False)
    again.resume_from(tmp_path / "epoch2.pt")
    again.train(train, valid, epochs=3, callbacks=[MetricCurves(TensorBoardLogger(config.log_dir))])

    for tag in TAGS:  # epoch 3 once, not twice
        assert [step for step, _ in scalar_events(config.log_dir / "tiny")[tag]] == [1, 2, 3]


def test_ctrl_c_inside_a_batch_keeps_last_pt_at_the_last_complete_epoch_and_says_how_to_resume(tmp_path):
    config = tiny_config(tmp_path)
    train, valid = loaders(count=8, batch_size=4)  # 2 batches per epoch: batch 3 is in epoch 2
    models = tmp_path / "models"
    classifier = CarvanaClassifier(config, progress=False)
    after_epoch_1 = {}

    class RememberWeights(Callback):
        def on_epoch_end(self, state: TrainState) -> None:
            after_epoch_1.update(weights(state.model))

    with pytest.raises(TrainingInterruptedError) as caught:
        classifier.train(InterruptingLoader(train, at=3), valid, epochs=3,
                         callbacks=[*_callbacks(tmp_path, config), RememberWeights()])

    assert isinstance(caught.value, KeyboardInterrupt)  # callers that only know Ctrl-C still stop
    message = str(caught.value)
    assert "interrupted during epoch 2/3" in message and f"--resume {models / 'last.pt'}" in message
    assert "holds epoch 1" in message
    saved = load_checkpoint(models / "last.pt")
    assert (saved["epoch"], saved["global_step"]) == (1, 2)
    model = CarvanaClassifier(config, progress=False)
    model.load_weights(models / "last.pt")
    assert same_weights(weights(model.model), after_epoch_1)  # not the half-trained weights of epoch 2
    assert [s for s, _ in scalar_events(config.log_dir / "tiny")["loss/val"]] == [1]  # writer flushed and closed

    resumed = CarvanaClassifier(config, progress=False)
    resumed.resume_from(models / "last.pt")
    state = resumed.train(train, valid, epochs=3, callbacks=_callbacks(tmp_path, config))
    assert (state.epoch, state.global_step) == (3, 6)


def test_ctrl_c_in_the_first_epoch_saves_nothing_and_says_so(tmp_path):
    config = tiny_config(tmp_path)
    train, valid = loaders(count=8, batch_size=4)

    with pytest.raises(TrainingInterruptedError, match="no epoch was completed, so there is nothing to resume"):
        CarvanaClassifier(config, progress=False).train(
            InterruptingLoader(train, at=2), valid, epochs=2, callbacks=_callbacks(tmp_path, config)
        )
    assert not (tmp_path / "models" / "last.pt").exists()


def test_ctrl_c_during_the_epoch_end_hooks_still_saves_the_completed_epoch(tmp_path):
    config = tiny_config(tmp_path)
    train, valid = loaders(count=4)

    class CtrlCAtEpoch2(Callback):  # e.g. while TensorBoard writes, before the checkpoint's turn
        def on_epoch_end(self, state: TrainState) -> None:
            if state.epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(TrainingInterruptedError, match="holds epoch 2"):
        CarvanaClassifier(config, progress=False).train(
            train, valid, epochs=3, callbacks=[CtrlCAtEpoch2(), ModelCheckpoint(tmp_path / "models")]
        )
    assert load_checkpoint(tmp_path / "models" / "last.pt")["epoch"] == 2


def test_a_nan_loss_stops_training_naming_epoch_and_step_and_leaves_the_checkpoints_alone(tmp_path):
    config = tiny_config(tmp_path)
    train, valid = loaders(count=8, batch_size=4)
    classifier = CarvanaClassifier(config, progress=False)
    forward_calls = {"n": 0}

    def poison_second_epoch(module, inputs, output):
        if module.training:
            forward_calls["n"] += 1
            if forward_calls["n"] == 4:  # epoch 2, step 2
                return output * float("nan")
        return output

    classifier.model.register_forward_hook(poison_second_epoch)
    models = tmp_path / "models"
    best_before = {}

    class RememberBest(Callback):
        def on_epoch_end(self, state: TrainState) -> None:
            best_before["digest"] = _digest(models / "best.pt")

    with pytest.raises(TrainingDiverged, match=r"nan at epoch 2, step 2 \(global step 4\)"):
        classifier.train(train, valid, epochs=3, callbacks=[*_callbacks(tmp_path, config), RememberBest()])

    assert _digest(models / "best.pt") == best_before["digest"]
    saved = load_checkpoint(models / "last.pt")
    assert saved["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in saved["model_state"].values() if t.is_floating_point())
    assert math.isfinite(saved["best_score"])


# ------------------------------------------------------------------ the callbacks' own state


class Probe(Callback):
    """Notes what the checkpoint and early-stopping callbacks hold once training has begun (runs after both)."""

    order = OBSERVE

    def __init__(self, checkpoint: ModelCheckpoint, stopper: EarlyStopping):
        self.checkpoint, self.stopper = checkpoint, stopper
        self.seen: tuple = ()

    def on_train_begin(self, state: TrainState) -> None:
        self.seen = (self.checkpoint.best_model_score, self.stopper.best_score, self.stopper.wait_count)


def _two_epochs_with_callbacks(tmp_path: Path, config) -> Path:
    train, valid = loaders(count=4)
    models = tmp_path / "models"
    CarvanaClassifier(config, progress=False).train(
        train, valid, epochs=2, callbacks=[ModelCheckpoint(models), EarlyStopping(patience=3, min_delta=1.0)])
    return models / "last.pt"


def test_a_resumed_run_takes_up_the_callbacks_state_saved_in_its_checkpoint(tmp_path):
    config = tiny_config(tmp_path)
    last = _two_epochs_with_callbacks(tmp_path, config)
    best_before = _digest(last.parent / "best.pt")
    saved = load_checkpoint(last)
    states = saved["callbacks"]
    assert states["ModelCheckpoint"]["best_model_score"] == pytest.approx(saved["best_score"])
    assert states["EarlyStopping"]["wait_count"] == 1  # no epoch after the first can improve by a whole 1.0
    # A state the history could not give: an unbeatable best score, one epoch of patience left.
    states["ModelCheckpoint"]["best_model_score"] = 2.0
    states["EarlyStopping"].update(best_score=2.0, wait_count=2)
    saved.pop(CHECKSUM_KEY, None)
    save_checkpoint(last, saved)

    resumed = CarvanaClassifier(config, progress=False)
    resumed.resume_from(last)
    checkpoint, stopper = ModelCheckpoint(last.parent), EarlyStopping(patience=3, min_delta=1.0)
    probe = Probe(checkpoint, stopper)
    train, valid = loaders(count=4)
    state = resumed.train(train, valid, epochs=6, callbacks=[checkpoint, stopper, probe])

    assert probe.seen == (2.0, 2.0, 2)
    assert (state.epoch, stopper.stopped_epoch, stopper.wait_count) == (3, 3, 3)
    assert checkpoint.best_model_score == 2.0 and checkpoint.best_model_path == last.parent / "best.pt"
    assert _digest(last.parent / "best.pt") == best_before  # no epoch beat the restored best score


def test_a_checkpoint_without_callback_states_resumes_with_its_best_score_and_history(tmp_path):
    config = tiny_config(tmp_path)
    last = _two_epochs_with_callbacks(tmp_path, config)
    payload = load_checkpoint(last)
    del payload["callbacks"]
    payload.pop(CHECKSUM_KEY, None)
    older = tmp_path / "older.pt"
    save_checkpoint(older, payload)

    resumed = CarvanaClassifier(config, progress=False)
    resumed.resume_from(older)
    checkpoint, stopper = ModelCheckpoint(tmp_path / "again"), EarlyStopping(patience=3, min_delta=1.0)
    probe = Probe(checkpoint, stopper)
    train, valid = loaders(count=4)
    state = resumed.train(train, valid, epochs=3, callbacks=[checkpoint, stopper, probe])

    first = payload["history"][0]["val_dice"]
    assert probe.seen == (pytest.approx(payload["best_score"]), pytest.approx(first), 1)  # counted from the history
    assert state.epoch == 3 and stopper.wait_count == 2
