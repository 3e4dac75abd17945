"""One owner per run fact: the run object (name, folders, checkpoint paths, geometry), the typed
checkpoint read once (the recipe kept apart from where the run ran) and the one table of flags."""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path

import pytest
import torch

from carvana import cli
from carvana.core.errors import CheckpointError
from carvana.models import build_model
from carvana.run.checkpoint import Checkpoint, save_checkpoint, settings_entries
from carvana.run.config import ENVIRONMENT_FIELDS, Environment
from carvana.pipeline.settings import given_settings, resumed_settings
from carvana.run.flags import FLAGS, flag_of, flags_of
from carvana.run.identity import BEST_NAME, LAST_NAME, reserve_new_run
from cli_helpers import run_cli
from data_factory import make_tiny_carvana
from training_helpers import tiny_config

FAR = Path("/nonexistent/another/machine")


def far_config(**changes):
    """A tiny run's settings as another machine ran them: folders that do not exist here, its own device."""
    return tiny_config(data_dir=FAR / "input", output_dir=FAR / "output", log_dir=FAR / "logs", workers=0,
                       device="cuda:7", cache=False, **changes)


def write_checkpoint(path: Path, config, *, flat: bool = False, **entries) -> Path:
    """A checkpoint of `config` with fresh weights; `flat`: in the format that kept every setting under `config`."""
    settings = {"config": config.to_dict()} if flat else settings_entries(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"format": 1, "model_name": config.model, "width": config.width, "run_name": config.run_name,
                           "epoch": 1, "global_step": 2, "model_state": build_model(config.model, config.width)
                           .state_dict(), **settings, **entries})
    return path


# --------------------------------------------------------------------------- the checkpoint


@pytest.mark.parametrize("flat", [False, True], ids=["recipe apart", "one config (older files)"])
def test_a_checkpoint_reads_the_recipe_and_where_the_run_ran_apart(flat, tmp_path):
    config = far_config()
    path = write_checkpoint(tmp_path / "last.pt", config, flat=flat)
    raw = torch.load(path, weights_only=True)
    if not flat:
        assert set(raw["environment"]) == set(ENVIRONMENT_FIELDS)
        assert not set(raw["config"]) & set(ENVIRONMENT_FIELDS)

    checkpoint = Checkpoint.load(path)
    assert checkpoint.environment == config.environment
    assert checkpoint.recipe.environment == Environment(), "the recipe holds no path of the machine it ran on"
    assert checkpoint.recipe.replace(run_name="tiny") == config.with_environment(Environment())
    assert (checkpoint.run_name, checkpoint.epoch, checkpoint.run) == ("tiny", 1, None)
    assert checkpoint.run_config() == config


@pytest.mark.parametrize("damage", ["foreign", "nan lr", "bad environment", "truncated"])
def test_a_checkpoint_that_cannot_be_used_is_one_line_naming_the_file(damage, tmp_path):
    path = tmp_path / "bad.pt"
    if damage == "foreign":
        torch.save({"weights": torch.zeros(2)}, path)
    elif damage == "nan lr":
        write_checkpoint(path, tiny_config(), flat=True)
        payload = torch.load(path, weights_only=True)
        payload["config"]["lr"] = math.nan
        torch.save(payload, path)
    elif damage == "bad environment":
        write_checkpoint(path, tiny_config(), environment={"data_dir": 7})
    else:
        write_checkpoint(path, tiny_config())
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError) as error:
        Checkpoint.load(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_latest_is_the_file_the_run_folders_own_or_the_newest_runs(tmp_path):
    models = tmp_path / "models"
    older = write_checkpoint(models / "a" / BEST_NAME, tiny_config())
    newer = write_checkpoint(models / "b" / BEST_NAME, tiny_config())
    os.utime(older, (1, 1))
    assert Checkpoint.latest(models, BEST_NAME).path == newer
    assert Checkpoint.latest(models / "a", BEST_NAME).path == older
    assert Checkpoint.latest(older, LAST_NAME).path == older
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'none'}: no trained model yet"):
        Checkpoint.latest(tmp_path / "none", BEST_NAME, missing="no trained model yet")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Checkpoint.latest(models / "a" / LAST_NAME, LAST_NAME)


def test_updating_a_checkpoint_writes_the_entry_without_reading_the_file_again(tmp_path):
    checkpoint = Checkpoint.load(write_checkpoint(tmp_path / "best.pt", tiny_config()))
    updated = checkpoint.updated({"prediction": {"threshold": 0.4}})
    assert updated.payload["prediction"] == {"threshold": 0.4} and updated.recipe == checkpoint.recipe
    assert Checkpoint.load(tmp_path / "best.pt").payload["prediction"] == {"threshold": 0.4}


# --------------------------------------------------------------------------- resume and predict


def test_resume_restores_where_the_run_ran_and_a_given_flag_overrides_it(tmp_path):
    config = far_config(run_name="far")
    saved = Checkpoint.load(write_checkpoint(tmp_path / "last.pt", config)).run_config()
    resumed, notes = resumed_settings(saved, {}, tmp_path / "last.pt")
    assert (resumed.data_dir, resumed.output_dir, resumed.log_dir, resumed.workers) == (
        FAR / "input", FAR / "output", FAR / "logs", 0)
    assert notes == []

    here = tmp_path / "input"
    resumed, notes = resumed_settings(saved, {"data_dir": here, "workers": 1, "output_dir": None},
                                      tmp_path / "last.pt")
    assert (resumed.data_dir, resumed.workers, resumed.output_dir) == (here, 1, FAR / "output")
    assert notes == [f"resume: --data-dir {FAR / 'input'} -> {here}", "resume: --workers 0 -> 1"]


def test_predict_with_a_checkpoint_from_another_machine_needs_none_of_its_paths(tmp_path, capsys, monkeypatch):
    checkpoint = write_checkpoint(tmp_path / "far.pt", far_config(run_name="far"))
    make_tiny_carvana(tmp_path, cars=1, views=2)  # ./input, as the defaults expect
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["predict", "--checkpoint", checkpoint, "--workers", "0"], capsys)
    assert code == 0, err
    assert (tmp_path / "output" / "submit.csv.gz").is_file()
    assert str(FAR) not in out + err and not FAR.exists()


# --------------------------------------------------------------------------- the run


def test_a_new_run_names_its_folders_and_checkpoints_once(tmp_path):
    config = dataclasses.replace(tiny_config(tmp_path), run_name=None)  # no --run-name
    run = reserve_new_run(config)
    try:
        assert run.name.startswith(f"{config.model}-")
        assert run.models_dir == tmp_path / "output" / "models" / run.name and run.models_dir.is_dir()
        assert run.log_dir == tmp_path / "logs" / run.name and run.log_dir.is_dir()
        assert (run.best_path, run.last_path) == (run.models_dir / BEST_NAME, run.models_dir / LAST_NAME)
    finally:
        run.forget()
    assert not run.models_dir.exists() and not run.log_dir.exists()


# --------------------------------------------------------------------------- the flag table


def test_every_flag_of_the_table_is_on_its_commands_and_sets_its_field():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in ("run", "train", "predict", "fetch"):
        sub = commands[command]
        offered = {option for action in sub._actions for option in action.option_strings}
        assert {flag.name for flag in flags_of(command)} <= offered, command
    args = parser.parse_args(["predict", "--data-dir", "d", "--output-dir", "o", "--batch-size", "3", "--workers", "0",
                              "--device", "cpu", "--amp", "off", "--threshold", "0.4", "--mask-cleanup", "fill",
                              "--tta"])
    assert given_settings(vars(args), args.command) == {
        "data_dir": Path("d"), "output_dir": Path("o"), "batch_size": 3, "workers": 0, "device": "cpu", "amp": "off",
        "threshold": 0.4, "tune_threshold": False, "mask_cleanup": "fill", "tta": True}
    args = parser.parse_args(["train", "--no-augment", "--no-cache", "--no-channels-last", "--no-tta", "--epochs", "2"])
    assert given_settings(vars(args), args.command) == {"augment": False, "cache": False, "memory_format": "nchw", "tta": False,
                                        "epochs": 2, "epochs_cap": True}
    assert given_settings(vars(parser.parse_args(["train"])), "train") == {}


def test_a_field_is_named_by_the_flag_that_sets_it():
    assert [flag_of(name) for name in ("lr", "early_stopping_patience", "epochs_cap", "tune_threshold", "augment",
                                       "momentum")] == [
        "--lr", "--patience", "--epochs", "--threshold", "--no-augment", "--momentum"]
    assert len({flag.name for flag in FLAGS}) == len(FLAGS)
