"""Kaggle credentials that are set but cannot work: named in one line, never used as "no credentials".

A user who set credentials wants the real data, so `--dataset auto` refuses (exit 1) instead of
quietly training on the built-in sample, and `--dataset kaggle` says what is wrong with the file or
variable before any request is made, never "not found, save it as <the same path>" or a network
error. No message ever holds the key.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from carvana.kaggle.credentials import credentials_problem, kaggle_credentials_configured
from cli_helpers import run_cli

pytestmark = pytest.mark.reliability

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "0123456789abcdef-not-a-real-key"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty HOME and config folder: no credentials but the ones a case sets up."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return home


def config_file() -> Path:
    return Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"


def write_config(text: str) -> Path:
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


# Each case sets up broken credentials and returns what the message must name (a path or a variable).
Setup = Callable[[pytest.MonkeyPatch], str]


def empty_key_variable(monkeypatch) -> str:
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "")
    return "KAGGLE_KEY"


def empty_key_variable_over_a_good_kaggle_json(monkeypatch) -> str:
    write_config(json.dumps({"username": "someone", "key": SECRET}))
    monkeypatch.setenv("KAGGLE_KEY", "  ")
    return "KAGGLE_KEY"


def username_variable_without_key(monkeypatch) -> str:
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    return "KAGGLE_KEY"


def kaggle_json_that_is_not_json(monkeypatch) -> str:
    return str(write_config(f"username=someone\nkey={SECRET}\n"))


def kaggle_json_without_key(monkeypatch) -> str:
    return str(write_config(json.dumps({"username": "someone"})))


def kaggle_json_without_either_field(monkeypatch) -> str:
    return str(write_config(json.dumps({"user": "someone", "token": SECRET})))


def kaggle_json_with_an_empty_key(monkeypatch) -> str:
    return str(write_config(json.dumps({"username": "someone", "key": ""})))


def kaggle_json_holding_a_list(monkeypatch) -> str:
    return str(write_config(json.dumps(["someone", SECRET])))


def kaggle_json_that_is_a_folder(monkeypatch) -> str:
    config_file().mkdir(parents=True)
    return str(config_file())


def token_variable_naming_an_empty_file(monkeypatch) -> str:
    token_file = Path(os.environ["HOME"]) / "token.txt"
    token_file.write_text("\n")
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(token_file))
    return "KAGGLE_API_TOKEN"


BROKEN = [empty_key_variable, empty_key_variable_over_a_good_kaggle_json, username_variable_without_key,
          kaggle_json_that_is_not_json, kaggle_json_without_key, kaggle_json_without_either_field,
          kaggle_json_with_an_empty_key, kaggle_json_holding_a_list, kaggle_json_that_is_a_folder,
          token_variable_naming_an_empty_file]


def assert_one_line(code: int, out: str, err: str, named: str) -> str:
    assert code == 1, out + err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and named in lines[0], lines[0]
    assert SECRET not in out + err
    return lines[0]


@pytest.mark.parametrize("setup", BROKEN, ids=lambda f: f.__name__)
def test_auto_with_broken_credentials_refuses_naming_them_instead_of_using_the_sample(setup: Setup, home, tmp_path,
                                                                                     monkeypatch, capsys):
    named = setup(monkeypatch)
    data_dir = tmp_path / "input"
    code, out, err = run_cli(["fetch", "--dataset", "auto", "--data-dir", data_dir], capsys)
    line = assert_one_line(code, out, err, named)
    assert "not found" not in line and "cannot reach" not in line
    assert not (data_dir / "sample").exists(), "the built-in sample was not generated instead"


@pytest.mark.parametrize("setup", [empty_key_variable, kaggle_json_that_is_not_json, kaggle_json_that_is_a_folder],
                         ids=lambda f: f.__name__)
def test_fetching_from_kaggle_with_broken_credentials_names_them_not_the_network(setup: Setup, home, tmp_path,
                                                                                 monkeypatch, capsys):
    named = setup(monkeypatch)
    code, out, err = run_cli(["fetch", "--dataset", "kaggle", "--data-dir", tmp_path / "input"], capsys)
    line = assert_one_line(code, out, err, named)
    assert "HTTP" not in line and "cannot reach" not in line and "save it as" not in line


def test_python_main_py_with_an_empty_kaggle_key_exits_1_before_training(home, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update({"HOME": str(home), "KAGGLE_CONFIG_DIR": str(tmp_path / "config"), "KAGGLE_USERNAME": "someone",
                "KAGGLE_KEY": "", "PYTHONPATH": str(REPO_ROOT)})
    result = subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), "--data-dir", str(tmp_path / "input"),
                             "--output-dir", str(tmp_path / "output"), "--log-dir", str(tmp_path / "logs")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert_one_line(result.returncode, result.stdout, result.stderr, "KAGGLE_KEY")
    assert "epoch" not in result.stdout
    assert not (tmp_path / "input" / "sample").exists()


def test_good_variables_win_over_a_broken_kaggle_json_as_in_kaggle_itself(home, monkeypatch):
    write_config("{not json")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    assert kaggle_credentials_configured()
    assert credentials_problem() is None


def test_no_credentials_at_all_is_no_problem_and_auto_still_uses_the_sample(home):
    assert not kaggle_credentials_configured()
    assert credentials_problem() is None
