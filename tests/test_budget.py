"""A training budget: `--max-steps` and `--max-time` end a run cleanly, counting resumed parts, and a
budget without `--epochs` trains as long as it allows rather than stopping at the preset's epoch count."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from training_helpers import loaders, tiny_config

from carvana.core.durations import format_duration, parse_duration
from carvana.core.errors import ConfigError
from carvana.run.checkpoint import load_checkpoint
from carvana.run.config import Config, preset
from carvana.train.classifier import CarvanaClassifier
from carvana.train.model_checkpoint import ModelCheckpoint
from cli_helpers import epochs_printed, run_cli
from data_factory import make_tiny_carvana
from test_reliability import STEPS_PER_EPOCH, TINY

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """3 cars x 16 views at 192x128 (2 training cars, 1 validation car) and a 16-photo test set."""
    return make_tiny_carvana(tmp_path_factory.mktemp("data"), cars=3)


def args(command: str, data_dir: Path, work: Path, *extra: str) -> list[str]:
    return [command, "--data-dir", str(data_dir), *TINY, "--output-dir", str(work / "output"),
            "--log-dir", str(work / "logs"), *extra]


def summary_line(out: str, label: str) -> str:
    """A line of the summary `run` prints at the end (indented, after `Done in ...`)."""
    return [line for line in out.splitlines() if line.startswith("  " + label)][-1]


def test_max_steps_ends_the_run_mid_epoch_with_valid_checkpoints_a_submission_and_a_resumable_last_pt(
        tiny_data, tmp_path, capsys):
    code, out, err = run_cli(args("run", tiny_data, tmp_path, "--max-steps", "6", "--run-name", "steps"), capsys)
    assert code == 0, err
    assert epochs_printed(out) == [1, 2], "6 steps of 4 per epoch: one full epoch and half of the next"
    ended = f"stopped at the step budget --max-steps 6 in epoch 2, after 2 of its {STEPS_PER_EPOCH} steps"
    assert ended in summary_line(out, "Training:"), out
    models = tmp_path / "output" / "models" / "steps"
    last = load_checkpoint(models / "last.pt")
    assert (last["epoch"], last["global_step"], last["epoch_steps"], len(last["history"])) == (2, 6, 2, 2)
    assert load_checkpoint(models / "best.pt")["global_step"] in (4, 6)
    assert (tmp_path / "output" / "submit.csv.gz").stat().st_size > 0  # written and validated by `run`

    code, out, err = run_cli(args("train", tiny_data, tmp_path, "--resume", "last", "--max-steps", "10"), capsys)
    assert code == 0, err
    assert "resume: --max-steps 6 -> 10" in out
    assert epochs_printed(out) == [3], "the cut epoch counts as done: the next one starts from its beginning"
    last = load_checkpoint(models / "last.pt")
    assert (last["epoch"], last["global_step"], last["epoch_steps"]) == (3, 10, STEPS_PER_EPOCH)
    assert "Training stopped at the step budget --max-steps 10 after epoch 3" in out


def test_a_step_budget_without_epochs_trains_past_the_preset_epochs_and_the_cosine_reaches_zero_at_its_end(tmp_path):
    # The "preset" asks for 2 epochs; 6 steps at 2 steps per epoch need 3.
    config = tiny_config(tmp_path, scheduler="cosine", epochs=2, epochs_cap=False, max_steps=6)
    train, valid = loaders(count=8, batch_size=4)
    classifier = CarvanaClassifier(config, progress=False)
    state = classifier.train(train, valid, callbacks=[ModelCheckpoint(tmp_path / "models")])
    assert (state.epoch, state.global_step) == (3, 6)
    assert "stopped at the step budget --max-steps 6 after epoch 3" == state.stop_reason
    trained_lrs = [entry["lr"] for entry in state.history]
    assert trained_lrs == pytest.approx([config.lr * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)])
    assert classifier.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)

    capped = tiny_config(tmp_path, scheduler="cosine", epochs=2, max_steps=6)  # --epochs 2 given: it still caps
    state = CarvanaClassifier(capped, progress=False).train(train, valid)
    assert (state.epoch, state.global_step, state.stop_reason) == (2, 4, "finished all 2 epochs")


def test_max_time_stops_cleanly_and_a_resume_trains_only_what_is_left_of_the_budget(tiny_data, tmp_path, capsys):
    code, out, err = run_cli(args("train", tiny_data, tmp_path, "--max-time", "2s", "--run-name", "timed"), capsys)
    assert code == 0, err
    trained = epochs_printed(out)
    assert trained and trained[-1] < preset("cpu").epochs, "the time budget, not the preset's epochs, ended it"
    assert "Training stopped at the time budget --max-time 2s" in out
    last_pt = tmp_path / "output" / "models" / "timed" / "last.pt"
    first = load_checkpoint(last_pt)
    per_epoch = first["train_seconds"] / first["epoch"]
    assert first["epoch"] == trained[-1] and first["config"]["max_time"] == 2.0
    # Stopped when the time was spent or the next epoch would not fit: overrun by at most one epoch's validation.
    assert 0 < first["train_seconds"] < 2.0 + per_epoch + 1.0

    code, out, err = run_cli(args("train", tiny_data, tmp_path, "--resume", "last"), capsys)
    assert code == 0, err
    assert epochs_printed(out) == [], "the saved run's budget is spent: nothing more to train"
    assert "stopped at the time budget --max-time 2s" in out and "pass a larger --max-time" in out

    budget = math.ceil(first["train_seconds"] + 2.5 * per_epoch)  # room for about two more epochs
    code, out, err = run_cli(args("train", tiny_data, tmp_path, "--resume", "last", "--max-time", f"{budget}s"),
                             capsys)
    assert code == 0, err
    resumed = epochs_printed(out)
    assert resumed and resumed[0] == first["epoch"] + 1, out
    assert f"resume: --max-time 2s -> {format_duration(budget)}" in out
    assert "epochs cap" not in out, "a resumed run keeps whether epochs cap it; only the budget changed"
    second = load_checkpoint(last_pt)
    assert second["epoch"] == resumed[-1] and second["train_seconds"] > first["train_seconds"]
    assert second["train_seconds"] < budget + second["train_seconds"] / second["epoch"] + 1.0
    assert f"Training stopped at the time budget --max-time {format_duration(budget)}" in out


BAD_BUDGETS = [
    (["train", "--max-time", "9"], "--max-time", "has no unit"),
    (["train", "--max-time", "0s"], "--max-time", "above 0"),
    (["train", "--max-time", "ten minutes"], "--max-time", "not a duration"),
    (["train", "--max-time", "30m1h"], "--max-time", "largest to the smallest"),
    (["--max-time=-5m"], "--max-time", "not a duration"),
    (["train", "--max-steps", "0"], "--max-steps", "at least 1"),
    (["train", "--max-steps", "2.5"], "--max-steps", "whole number"),
]


@pytest.mark.parametrize("argv, flag, why", BAD_BUDGETS, ids=[" ".join(a) for a, _, _ in BAD_BUDGETS])
def test_a_bad_budget_is_one_line_naming_the_flag_with_exit_code_2(argv, flag, why, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        run_cli(argv, capsys)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"error: argument {flag}" in lines[0] and why in lines[0], lines
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1.5h", 5400), ("9h", 32400),
                                           ("1h30m", 5400), ("2d", 172800)])
def test_durations_read_as_typed(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("field, value", [("max_steps", 0), ("max_steps", 2.5), ("max_time", -1.0),
                                          ("max_time", math.inf), ("epochs_cap", False)])
def test_a_budget_read_back_from_a_checkpoint_gets_the_flags_checks(field, value):
    data = preset("cpu").to_dict()
    data[field] = value
    with pytest.raises(ConfigError):
        Config.from_dict(data)


def test_a_checkpoint_from_before_budgets_resumes_with_no_budget(tmp_path):
    config = tiny_config(tmp_path)
    train, valid = loaders(count=8, batch_size=4)
    CarvanaClassifier(config, progress=False).train(train, valid, epochs=1,
                                                    callbacks=[ModelCheckpoint(tmp_path / "models")])
    payload = torch.load(tmp_path / "models" / "last.pt", weights_only=True)
    for key in ("train_seconds", "epoch_steps"):
        payload.pop(key)
    for key in ("max_steps", "max_time", "epochs_cap"):
        payload["config"].pop(key)
    torch.save(payload, tmp_path / "old.pt")
    classifier = CarvanaClassifier(config, progress=False)
    classifier.resume_from(tmp_path / "old.pt")
    state = classifier.train(train, valid, epochs=2)
    assert (state.epoch, state.stop_reason) == (2, "finished all 2 epochs")
