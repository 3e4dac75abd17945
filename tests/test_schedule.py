"""The learning-rate schedule: one cosine curve whose LR each epoch trains with depends on the epoch alone,
so a resumed, extended or budgeted run follows the curve a straight run would; plateau's state carries on."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from training_helpers import loaders, tiny_config

from carvana.run.checkpoint import load_checkpoint, save_checkpoint
from carvana.train.classifier import CarvanaClassifier
from carvana.train.model_checkpoint import ModelCheckpoint
from carvana.train.schedule import FINE_LR_FACTOR, cosine_factor

LR = 3e-3  # tiny_config's


def curve(epochs: int, first: int = 1, last: int | None = None, lr: float = LR) -> list[float]:
    """The LRs epochs `first`..`last` (1-based) train with on one cosine curve from `lr` over `epochs`."""
    return [lr * (1 + math.cos(math.pi * (e - 1) / epochs)) / 2 for e in range(first, (last or epochs) + 1)]


def trained_lrs(classifier: CarvanaClassifier, **train) -> list[float]:
    train_loader, valid_loader = loaders(count=4)
    return [entry["lr"] for entry in classifier.train(train_loader, valid_loader, **train).history]


def first_epochs(tmp_path: Path, epochs: int, **changes) -> Path:
    """last.pt of a cosine run planned for `epochs` epochs that trained the first `epochs_trained` of them."""
    trained = changes.pop("epochs_trained", 1)
    config = tiny_config(tmp_path, scheduler="cosine", epochs=epochs, **changes)
    trained_lrs(CarvanaClassifier(config, progress=False), epochs=trained,
                callbacks=[ModelCheckpoint(tmp_path / "models")])
    return tmp_path / "models" / "last.pt"


def test_the_cosine_factor_of_a_coarse_run_is_one_cycle_over_the_coarse_phase_then_a_second_from_a_lower_lr():
    config = tiny_config(scheduler="cosine", epochs=6, coarse_epochs=2)
    assert config.coarse_phase_epochs == 2
    factors = [cosine_factor(config, 6, epoch) for epoch in range(7)]
    assert factors == pytest.approx([1.0, 0.5, FINE_LR_FACTOR, FINE_LR_FACTOR * (1 + math.cos(math.pi / 4)) / 2,
                                     FINE_LR_FACTOR / 2, FINE_LR_FACTOR * (1 + math.cos(3 * math.pi / 4)) / 2, 0.0])
    assert cosine_factor(config, 1, 0) == 1.0 and cosine_factor(config, 1, 1) == pytest.approx(0.0, abs=1e-12), \
        "a run planned to end inside the coarse phase: one cycle over the run"
    assert cosine_factor(tiny_config(scheduler="cosine"), 0, 0) == 1.0  # no plan yet: no division by zero


def test_a_cosine_run_resumed_mid_curve_trains_each_epoch_at_the_lr_of_a_straight_run(tmp_path):
    straight = trained_lrs(CarvanaClassifier(tiny_config(scheduler="cosine", epochs=4), progress=False))
    assert straight == pytest.approx(curve(4))

    resumed = CarvanaClassifier(tiny_config(scheduler="cosine", epochs=4), progress=False)
    resumed.resume_from(first_epochs(tmp_path, 4, epochs_trained=2))
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(curve(4)[2]), "the LR epoch 3 trains with"
    assert trained_lrs(resumed) == pytest.approx(curve(4))


def test_a_checkpoint_with_a_cosine_annealing_lr_state_resumes_on_the_curve(tmp_path):
    last = first_epochs(tmp_path, 4)
    payload = load_checkpoint(last)
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=LR)
    old = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    optimizer.step()
    old.step()  # what an older version saved after its first epoch
    save_checkpoint(last, {**payload, "scheduler_state": old.state_dict()})

    resumed = CarvanaClassifier(tiny_config(scheduler="cosine", epochs=4), progress=False)
    resumed.resume_from(last)
    assert trained_lrs(resumed) == pytest.approx(curve(4))


def test_a_new_lr_on_resume_and_a_larger_epoch_count_give_one_curve_from_the_new_lr_to_the_new_end(tmp_path):
    last = first_epochs(tmp_path, 2, epochs_trained=2)
    resumed = CarvanaClassifier(tiny_config(scheduler="cosine", epochs=4, lr=1e-3), progress=False)
    resumed.resume_from(last)
    history = trained_lrs(resumed)
    assert history[:2] == pytest.approx(curve(2))
    assert history[2:] == pytest.approx(curve(4, first=3, lr=1e-3))


def test_a_step_budget_moves_the_end_of_the_curve_of_a_resumed_run(tmp_path):
    # One step per epoch: --max-steps 3 ends the run after epoch 3 whatever its preset's 6 epochs.
    last = first_epochs(tmp_path, 6)
    budgeted = tiny_config(tmp_path, scheduler="cosine", epochs=6, epochs_cap=False, max_steps=3)
    resumed = CarvanaClassifier(budgeted, progress=False)
    resumed.resume_from(last)
    lrs = trained_lrs(resumed)
    assert lrs == pytest.approx(curve(6, last=1) + curve(3, first=2))
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_a_plateau_run_resumes_with_its_reduced_lr_unless_the_lr_flag_changed(tmp_path):
    config = tiny_config(tmp_path, scheduler="plateau", epochs=1)
    first = CarvanaClassifier(config, progress=False)
    trained_lrs(first, callbacks=[ModelCheckpoint(tmp_path / "models")])
    last = tmp_path / "models" / "last.pt"
    payload = load_checkpoint(last)
    payload["optimizer_state"]["param_groups"][0]["lr"] = LR / 4  # as if the plateau had halved it twice
    payload["scheduler_state"]["num_bad_epochs"] = 1
    save_checkpoint(last, payload)

    same = CarvanaClassifier(config.replace(epochs=2), progress=False)
    same.resume_from(last)
    assert same.optimizer.param_groups[0]["lr"] == LR / 4 and same.scheduler.num_bad_epochs == 1
    changed = CarvanaClassifier(config.replace(epochs=2, lr=1e-3), progress=False)
    changed.resume_from(last)
    assert changed.optimizer.param_groups[0]["lr"] == 1e-3 and changed.scheduler.num_bad_epochs == 1
