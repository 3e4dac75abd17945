"""Every flag and every number is checked: a malformed or out-of-range value is ONE line on stderr
(`main.py <command>: error: argument --flag: ...`), exit code 2, never a traceback and never a run that
quietly does something else; settings read back from a checkpoint get the same checks.
"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from carvana import cli
from carvana.core.errors import ConfigError
from carvana.core.geometry import Size
from carvana.pipeline.settings import given_settings, requested_settings
from carvana.run.config import Config, preset
from cli_helpers import run_cli
from conftest import REPO_ROOT

pytestmark = pytest.mark.reliability

# (command line, the flag the one line must name)
BAD_FLAGS = [
    (["train", "--input-size", "abc"], "--input-size"),
    (["train", "--input-size", "-64x64"], "--input-size"),
    (["score", "submit.csv.gz", "--truth", "truth.csv", "--image-size", "12q"], "--image-size"),
    (["validate", "submit.csv.gz", "--image-size", "-5x10"], "--image-size"),
    (["fetch", "--sample-image-size", "big"], "--sample-image-size"),
    (["train", "--seed", "4294967296"], "--seed"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--width", "inf"], "--width"),
    (["train", "--grad-clip", "-1"], "--grad-clip"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "2.5"], "--epochs"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["predict", "--batch-size", "0"], "--batch-size"),
    (["train", "--workers", "-1"], "--workers"),
    (["train", "--patience", "0"], "--patience"),
    (["train", "--threshold", "1.5"], "--threshold"),
    (["predict", "--threshold", "nan"], "--threshold"),
    (["train", "--validation-size", "1"], "--validation-size"),
    (["train", "--sample-size", "0"], "--sample-size"),
    (["fetch", "--sample-cars", "0"], "--sample-cars"),
    (["submit", "submit.csv.gz", "-m", "x", "--timeout", "-5"], "--timeout"),
    (["--epochs", "0"], "--epochs"),  # `python main.py` with no subcommand is `run`
    (["train", "--run-name", "exp/1"], "--run-name"),
    (["train", "--run-name", ".."], "--run-name"),
    (["train", "--run-name", ".hidden"], "--run-name"),
    (["train", "--run-name", ""], "--run-name"),
    (["train", "--run-name", "my run"], "--run-name"),
    (["train", "--run-name", "a\\b"], "--run-name"),
]


@pytest.mark.parametrize("argv, flag", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_a_bad_flag_value_is_one_line_naming_the_flag_with_exit_code_2(argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may be created: no data, no output, no logs
    with pytest.raises(SystemExit) as exit_:
        run_cli(argv, capsys)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    command = argv[0] if argv[0] in cli.SUBCOMMANDS else "run"
    assert lines[0].startswith(f"main.py {command}: error: argument {flag}"), lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_real_process_given_a_malformed_size_prints_one_line_and_exits_2(tmp_path):
    done = subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), "train", "--input-size", "abc"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "main.py train: error: argument --input-size: 'abc' is not a size: give WIDTHxHEIGHT in whole pixels "
        "above 0, e.g. 384x256, or one number"]
    assert done.stdout == ""


def test_help_still_prints_the_usage_and_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: main.py train") and "--grad-clip" in out and "--run-name" in out


def test_good_values_still_parse():
    args = cli.build_parser().parse_args(["train", "--input-size", "384x256", "--lr", "1e-3", "--seed", "4294967295",
                                          "--grad-clip", "0.5", "--validation-size", "0.5", "--sample-size", "1",
                                          "--workers", "0", "--run-name", "exp-1.b_2"])
    config = requested_settings(given_settings(vars(args), args.command), base=preset("cpu"))
    assert (config.input_size, config.lr, config.seed, config.grad_clip) == ((384, 256), 1e-3, 2**32 - 1, 0.5)
    assert (config.workers, config.run_name) == (0, "exp-1.b_2")


@pytest.mark.parametrize("field, value", [
    ("lr", math.nan), ("lr", -1.0), ("lr", math.inf), ("width", math.inf), ("grad_clip", -1.0),
    ("grad_clip", math.nan), ("seed", 2**32), ("seed", -1), ("workers", -1), ("early_stopping_patience", 0),
    ("threshold", math.nan), ("validation_size", math.nan), ("momentum", 1.5), ("epochs", 2.5),
    ("batch_size", True), ("run_name", "a/b"), ("run_name", ".."), ("run_name", ""),
])
def test_settings_from_a_file_get_the_same_checks_as_flags(field, value):
    data = preset("cpu").to_dict()
    data[field] = value
    with pytest.raises(ConfigError):
        Config.from_dict(data)


def test_a_checkpoint_whose_saved_settings_cannot_work_is_refused_naming_it(tmp_path, capsys):
    from carvana.run.checkpoint import save_checkpoint
    from carvana.train.classifier import CarvanaClassifier

    config = preset("cpu").replace(input_size=Size(64, 64), width=0.125, device="cpu")
    classifier = CarvanaClassifier(config, progress=False)
    payload = {"format": 1, "model_name": config.model, "width": config.width, "run_name": "x",
               "config": {**config.to_dict(), "lr": math.nan}, "model_state": classifier.model.state_dict(),
               "epoch": 1, "global_step": 1}
    bad = tmp_path / "nan-lr.pt"
    save_checkpoint(bad, payload)
    assert torch.load(bad, weights_only=True)["config"]["lr"] != torch.load(bad, weights_only=True)["config"]["lr"]
    code, _, err = run_cli(["predict", "--checkpoint", bad, "--data-dir", tmp_path, "--output-dir", tmp_path / "o"],
                           capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "lr 'nan'" in lines[0], err
