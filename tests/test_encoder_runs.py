"""An encoder U-Net through the command line, as a user runs one: every encoder choice on a new run, the
encoder kept fixed and at its own learning rate, the run resumed and predicted from without the weights
file it started from, the choices in the runs table; the choices refused where they cannot apply."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_helpers import one_line_error, run_cli
from conftest import REPO_ROOT
from carvana.models.encoders import ResNetEncoder

pytestmark = pytest.mark.slow

SAMPLE = ["--dataset", "sample", "--sample-cars", "4", "--sample-image-size", "192x128"]
TINY = ["--preset", "cpu", "--input-size", "128x64", "--coarse-epochs", "0", "--batch-size", "8", "--workers", "0",
        "--no-tta", "--no-cache"]
CHOICES = ["--model", "unet_resnet18", "--upsample", "pixelshuffle", "--attention", "--encoder-lr-scale", "0.1",
           "--encoder-freeze-epochs", "1"]
RUN = "resnet18"


def main_py(args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def encoder_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The encoder's parameters (not batch norm's running statistics) in a checkpoint, as the encoder names them."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model_state"]
    return {key.removeprefix("encoder."): value for key, value in state.items()
            if key.startswith("encoder.") and not key.endswith(("running_mean", "running_var", "num_batches_tracked"))}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One epoch of a run started from a weights file in torchvision's layout, the encoder frozen in it."""
    workdir = tmp_path_factory.mktemp("encoder-run")
    torch.manual_seed(1)
    weights = workdir / "resnet18-weights.pth"
    torch.save(ResNetEncoder("resnet18").state_dict(), weights)
    done = main_py(["train", *SAMPLE, *TINY, *CHOICES, "--encoder-weights", weights, "--epochs", "1", "--run-name",
                    RUN], workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    return workdir


def test_a_new_run_starts_from_the_weights_file_and_keeps_the_encoder_fixed_in_its_frozen_epochs(workdir):
    weights = torch.load(workdir / "resnet18-weights.pth", weights_only=True)
    trained = encoder_state(workdir / "output/models" / RUN / "last.pt")
    assert trained.keys() <= weights.keys() and len(trained) > 50
    assert all(torch.equal(value, weights[key]) for key, value in trained.items())


def test_the_checkpoint_holds_the_choices_and_the_encoder_trains_at_its_share_of_the_lr(workdir):
    payload = torch.load(workdir / "output/models" / RUN / "last.pt", map_location="cpu", weights_only=True)
    config = payload["config"]
    assert (config["model"], config["upsample"], config["attention"]) == ("unet_resnet18", "pixelshuffle", True)
    assert (config["encoder_lr_scale"], config["encoder_freeze_epochs"]) == (0.1, 1)
    decoder, encoder = payload["optimizer_state"]["param_groups"]
    assert encoder["encoder"] and encoder["lr"] == pytest.approx(0.1 * decoder["lr"])


def test_resume_and_predict_need_no_weights_file_and_the_encoder_learns_after_its_frozen_epochs(workdir):
    (workdir / "resnet18-weights.pth").rename(workdir / "moved.pth")
    try:
        resumed = main_py(["train", "--resume", f"output/models/{RUN}/last.pt", "--epochs", "2", "--workers", "0"],
                          workdir)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        start = torch.load(workdir / "moved.pth", weights_only=True)
        trained = encoder_state(workdir / "output/models" / RUN / "last.pt")
        assert any(not torch.equal(value, start[key]) for key, value in trained.items())
        predicted = main_py(["predict", "--checkpoint", f"output/models/{RUN}", "--data-dir", "input/sample",
                             "--output-dir", "predicted", "--workers", "0"], workdir)
        assert predicted.returncode == 0, predicted.stdout + predicted.stderr
        assert (workdir / "predicted/submit.csv.gz").stat().st_size > 0
    finally:
        (workdir / "moved.pth").rename(workdir / "resnet18-weights.pth")


def test_the_runs_table_names_the_choices(workdir, capsys):
    code, out, _ = run_cli(["runs", "--output-dir", workdir / "output"], capsys)
    row = next(line for line in out.splitlines() if line.startswith(RUN))
    assert code == 0 and "unet_resnet18 pixelshuffle attention" in row and "encoder lr x0.1" in row


def test_a_resume_cannot_change_the_decoder_or_the_starting_weights(workdir, capsys):
    for flags, named in ((["--upsample", "bilinear"], "--upsample"), (["--no-attention"], "--attention"),
                         (["--encoder-weights", "imagenet"], "--encoder-weights")):
        code, _, err = run_cli(["train", "--resume", workdir / f"output/models/{RUN}/last.pt", *flags], capsys)
        assert code != 0 and named in one_line_error(err)


@pytest.mark.parametrize("flags", [["--upsample", "bilinear"], ["--encoder-weights", "imagenet"],
                                   ["--encoder-freeze-epochs", "2"], ["--encoder-lr-scale", "0.1"]])
def test_encoder_choices_for_a_model_without_an_encoder_are_refused_in_one_line(flags, tmp_path, capsys):
    code, _, err = run_cli(["train", "--output-dir", tmp_path / "out", *SAMPLE, *TINY, *flags], capsys)
    line = one_line_error(err)
    assert code != 0 and "unet_resnet34" in line and not (tmp_path / "out/models").exists()


@pytest.mark.parametrize("preset,model", [("cpu", "unet1024"), ("unet_original", "unet_original")])
def test_attention_gates_are_every_unets_choice_not_only_the_encoder_unets(preset, model, capsys):
    code, out, err = run_cli(["train", "--preset", preset, "--attention", "--print-config"], capsys)
    assert code == 0 and f"model: {model}" in out + err and "attention: true" in out + err


def test_a_missing_weights_file_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys):
    code, _, err = run_cli(["train", "--output-dir", tmp_path / "out", "--data-dir", tmp_path / "data", *SAMPLE, *TINY,
                            "--model", "unet_resnet18", "--encoder-weights", tmp_path / "no-such.pth"], capsys)
    assert code != 0 and "no-such.pth" in one_line_error(err)
    assert not any((tmp_path / "out/models").glob("*/*.pt"))


def test_print_config_with_resume_shows_the_settings_the_run_goes_on_with(workdir, capsys):
    code, out, err = run_cli(["train", "--resume", workdir / f"output/models/{RUN}/last.pt", "--lr", "0.001",
                              "--print-config"], capsys)
    shown = out + err
    assert code == 0 and "model: unet_resnet18" in shown and "upsample: pixelshuffle" in shown
    assert "lr: 0.001" in shown


def test_the_resnet34_preset_starts_from_imagenet_and_another_model_on_it_drops_the_encoder_settings(capsys):
    code, out, err = run_cli(["train", "--preset", "unet_resnet34", "--print-config"], capsys)
    assert code == 0 and "model: unet_resnet34" in out + err and "encoder_weights: imagenet" in out + err
    code, out, err = run_cli(["train", "--preset", "unet_resnet34", "--model", "unet1024", "--print-config"], capsys)
    assert code == 0 and "model: unet1024" in out + err and "encoder_weights: none" in out + err
