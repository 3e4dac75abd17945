"""Progressive resizing: `--coarse-epochs N` trains a run's first N epochs at half the input size, then the
rest at the input size from a new cosine cycle; best.pt, early stopping and predictions belong to the
full size; a run cut in either phase resumes where it was."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from training_helpers import ellipse_dataset, tiny_config
from torch.utils.data import DataLoader

from carvana.core.errors import ConfigError
from carvana.core.geometry import Size
from carvana.models.input_sizes import coarse_input_size
from carvana.models.specs import UNET1024, UNET_ORIGINAL
from carvana.run.checkpoint import load_checkpoint
from carvana.run.config import Config, preset
from carvana.train.classifier import CarvanaClassifier, CoarsePhase
from carvana.train.schedule import FINE_LR_FACTOR
from carvana.train.early_stopping import EarlyStopping
from carvana.train.model_checkpoint import ModelCheckpoint
from cli_helpers import epochs_printed, run_cli
from data_factory import make_tiny_carvana
from test_reliability import TINY

FULL, COARSE = 128, 64


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """3 cars x 16 views at 192x128 (2 training cars, 1 validation car) and a 16-photo test set."""
    return make_tiny_carvana(tmp_path_factory.mktemp("data"), cars=3)


def phase_config(tmp_path: Path, **changes) -> Config:
    return tiny_config(tmp_path, **{"input_size": Size(FULL, FULL), "scheduler": "cosine", "epochs": 3,
                                    "coarse_epochs": 2, **changes})


def phase_loaders(side: int) -> tuple[DataLoader, DataLoader]:
    data = ellipse_dataset(8, side)
    return DataLoader(data, batch_size=4, shuffle=True), DataLoader(data, batch_size=4)


def input_sides_per_epoch(classifier: CarvanaClassifier) -> list[int]:
    """Records the side of every training batch the model sees; returns the live list (one entry per batch)."""
    sides: list[int] = []
    classifier.model.register_forward_pre_hook(
        lambda module, inputs: sides.append(inputs[0].shape[-1]) if module.training else None)
    return sides


def test_the_coarse_size_is_half_the_input_at_sizes_the_net_takes() -> None:
    assert coarse_input_size(UNET1024, Size(384, 256)) == Size(192, 128)
    assert coarse_input_size(UNET1024, Size(256, 384)) == Size(128, 192)
    assert coarse_input_size(UNET1024, Size(1024, 1024)) == Size(512, 512)
    assert coarse_input_size(UNET1024, Size(320, 320)) == Size(192, 192)  # 160 is not a multiple of 64
    with pytest.raises(ConfigError, match="coarse epochs: unet_original"):
        Config(model=UNET_ORIGINAL, input_size=Size(572, 572), coarse_epochs=3)


def test_the_cpu_preset_trains_30_of_its_38_epochs_coarse_and_a_short_or_budget_run_trains_none() -> None:
    cpu = preset("cpu")
    assert (cpu.epochs, cpu.coarse_phase_epochs) == (38, 30)
    assert cpu.replace(epochs=5).coarse_phase_epochs == 0
    assert cpu.replace(epochs=31).coarse_phase_epochs == 30
    assert cpu.replace(epochs_cap=False, max_time=600.0).coarse_phase_epochs == 0
    assert cpu.replace(coarse_epochs=0).coarse_phase_epochs == 0


def test_coarse_epochs_train_on_the_coarse_loaders_then_a_new_cosine_cycle_at_the_full_size(tmp_path) -> None:
    config = phase_config(tmp_path)
    classifier = CarvanaClassifier(config, progress=False)
    sides = input_sides_per_epoch(classifier)
    checkpoint = ModelCheckpoint(tmp_path / "models")
    state = classifier.train(*phase_loaders(FULL), callbacks=[checkpoint], coarse=CoarsePhase(*phase_loaders(COARSE)))

    assert sides == [COARSE] * 4 + [FULL] * 2, "two coarse epochs of two batches, then one at the full size"
    lrs = [entry["lr"] for entry in state.history]
    assert lrs == pytest.approx([config.lr, config.lr * (1 + math.cos(math.pi / 2)) / 2, config.lr * FINE_LR_FACTOR])
    assert classifier.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    best = load_checkpoint(tmp_path / "models" / "best.pt")
    assert best["epoch"] == 3 and checkpoint.best_model_score == pytest.approx(state.history[2]["val_dice"]), (
        "a coarse epoch's Dice is at the coarse size: best.pt comes from the full-size epochs")


def test_a_run_cut_in_its_coarse_phase_resumes_in_it_and_follows_the_same_schedule(tmp_path) -> None:
    whole = CarvanaClassifier(phase_config(tmp_path / "whole"), progress=False)
    expected = whole.train(*phase_loaders(FULL), coarse=CoarsePhase(*phase_loaders(COARSE))).history

    cut = phase_config(tmp_path / "cut", max_steps=2)  # one epoch of two steps
    first = CarvanaClassifier(cut, progress=False)
    state = first.train(*phase_loaders(FULL), callbacks=[ModelCheckpoint(tmp_path / "cut")],
                        coarse=CoarsePhase(*phase_loaders(COARSE)))
    assert state.epoch == 1 and not (tmp_path / "cut" / "best.pt").exists()

    resumed = CarvanaClassifier(dataclasses.replace(cut, max_steps=None), progress=False)
    resumed.resume_from(tmp_path / "cut" / "last.pt")
    sides = input_sides_per_epoch(resumed)
    history = resumed.train(*phase_loaders(FULL), coarse=CoarsePhase(*phase_loaders(COARSE))).history
    assert sides == [COARSE] * 2 + [FULL] * 2
    assert [e["lr"] for e in history] == pytest.approx([e["lr"] for e in expected])


def test_a_run_still_in_its_coarse_phase_needs_the_coarse_loaders(tmp_path) -> None:
    classifier = CarvanaClassifier(phase_config(tmp_path), progress=False)
    with pytest.raises(ValueError, match="coarse phase"):
        classifier.train(*phase_loaders(FULL))


def test_early_stopping_counts_only_the_full_size_epochs(tmp_path) -> None:
    config = phase_config(tmp_path, epochs=4)
    stopper = EarlyStopping(patience=1)
    state = CarvanaClassifier(config, progress=False).train(
        *phase_loaders(FULL), callbacks=[stopper], coarse=CoarsePhase(*phase_loaders(COARSE)))
    assert state.epoch >= 3, "no coarse epoch can set the score a full-size one must beat"
    assert stopper.best_score is not None and stopper.best_score in [e["val_dice"] for e in state.history[2:]]


def test_run_prints_the_phases_and_predicts_at_the_full_size(tiny_data, tmp_path, capsys) -> None:
    work = ["--output-dir", tmp_path / "output", "--log-dir", tmp_path / "logs"]
    code, out, err = run_cli(["run", "--data-dir", tiny_data, *TINY, "--epochs", "3", "--coarse-epochs", "2",
                              "--run-name", "phases", *work], capsys)
    assert code == 0, err
    assert "input 128x64 -> output 128x64; epochs 1-2 at 64x64 (coarse phase" in out
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[:3] for line in epoch_lines] == [["epoch", "1/3", "at"], ["epoch", "2/3", "at"],
                                                          ["epoch", "3/3", "train"]]
    best = load_checkpoint(tmp_path / "output" / "models" / "phases" / "best.pt")
    assert best["epoch"] == 3 and best["config"]["input_size"] == [128, 64]
    assert (tmp_path / "output" / "submit.csv.gz").stat().st_size > 0

    code, out, err = run_cli(["train", "--resume", "last", "--epochs", "4", "--coarse-epochs", "3", *work], capsys)
    assert code == 1
    assert "--coarse-epochs 3:" in err and "was started with --coarse-epochs 2" in err and len(err.splitlines()) == 1


def test_a_short_run_says_it_has_no_coarse_phase(tiny_data, tmp_path, capsys) -> None:
    code, out, err = run_cli(["train", "--data-dir", tiny_data, *TINY, "--epochs", "1", "--coarse-epochs", "2",
                              "--output-dir", tmp_path / "output", "--log-dir", tmp_path / "logs"], capsys)
    assert code == 0, err
    assert "no coarse phase: --epochs 1 leaves no epoch after its 2" in out
    assert epochs_printed(out) == [1] and "at 64x64" not in out


def test_another_model_than_the_presets_takes_that_models_coarse_phase_unless_given() -> None:
    from carvana import cli
    from carvana.pipeline.settings import given_settings, requested_settings

    def settings(argv: list[str], base: Config) -> Config:
        return requested_settings(given_settings(vars(cli.build_parser().parse_args(argv)), "train"), base=base)

    paper = settings(["train", "--model", "unet_original"], preset("cpu"))
    assert (paper.model, paper.input_size, paper.coarse_phase_epochs) == (UNET_ORIGINAL, Size(572, 572), 0)
    given = settings(["train", "--model", "unet1024", "--coarse-epochs", "4"], preset("unet_original"))
    assert given.coarse_epochs == 4
