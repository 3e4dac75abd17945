"""Runs you can repeat: `config.yaml` in every run folder, `train --config FILE`, `--print-config`."""
from __future__ import annotations

import dataclasses
import datetime
import os
import resource
from pathlib import Path

import pytest
import yaml
import hypothesis
from hypothesis import HealthCheck, given, strategies as st

from carvana.core.errors import ConfigError
from carvana.run import settings_file
from carvana.run.checkpoint import Checkpoint
from carvana.run.config import SIZE_FIELDS, Config, preset
from carvana.run.fields import FIELDS
from carvana.run.settings_file import read_settings_file
from cli_helpers import one_line_error, run_cli, start_main


def printed_settings(args: list, capsys) -> dict:
    code, out, err = run_cli(["train", *args, "--print-config"], capsys)
    assert code == 0, err
    return yaml.safe_load(out)


def test_print_config_shows_the_preset_with_the_flags_applied(capsys):
    settings = printed_settings(["--preset", "cpu", "--lr", "0.01", "--input-size", "192x128"], capsys)

    assert settings["preset"] == "cpu" and settings["model"] == "unet1024"
    assert settings["lr"] == 0.01 and settings["input_size"] == "192x128"
    assert settings["data_dir"] == "input", "where it runs is printed beside the recipe"
    assert "run_name" not in settings


def test_printed_settings_read_back_as_a_config_file_give_the_same_settings(tmp_path, capsys):
    first = printed_settings(["--preset", "unet_original", "--epochs", "3", "--max-time", "10m", "--tta"], capsys)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(first))

    again = printed_settings(["--config", tmp_path / "config.yaml"], capsys)

    assert again == first


def test_a_hand_written_file_with_some_settings_keeps_the_preset_for_the_others_and_flags_override_it(
        tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("# my recipe\npreset: cpu\nepochs: 5\ninput-size: 192x128\npatience: 2\nlr: 0.001\n")

    settings = printed_settings(["--config", path, "--lr", "0.05"], capsys)

    assert settings["epochs"] == 5 and settings["input_size"] == "192x128"
    assert settings["early_stopping_patience"] == 2, "a flag's name works as a key too"
    assert settings["lr"] == 0.05, "the flag given overrides the file"
    assert settings["batch_size"] == preset("cpu").batch_size, "a setting the file leaves out is the preset's"


def test_unknown_keys_are_refused_in_one_line_naming_them(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text("epochs: 5\nlearning_rate: 0.1\nbatchsize: 4\n")

    code, _, err = run_cli(["train", "--config", path, "--print-config"], capsys)

    line = one_line_error(err)
    assert code != 0 and str(path) in line and "learning_rate" in line and "batchsize" in line


def test_bad_values_and_bad_yaml_are_refused_in_one_line(tmp_path, capsys):
    cases = {"value.yaml": ("epochs: many\n", "epochs"), "kind.yaml": ("tta: maybe\n", "true or false"),
             "broken.yaml": ("epochs: [5\n", "not valid YAML"), "list.yaml": ("- epochs\n", "name: value")}
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        code, _, err = run_cli(["train", "--config", path, "--print-config"], capsys)
        line = one_line_error(err)
        assert code != 0 and str(path) in line and expected in line, (name, line)


def test_config_with_resume_is_refused(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\n")

    code, _, err = run_cli(["train", "--config", path, "--resume", "last"], capsys)

    assert code != 0 and "--config with --resume" in one_line_error(err)


def recorded_recipe(run_folder) -> tuple[dict, dict]:
    """The settings a run's config.yaml holds, and its best checkpoint's recipe and environment."""
    saved = yaml.safe_load((run_folder / "config.yaml").read_text())
    checkpoint = Checkpoint.load(run_folder / "best.pt")
    return saved, checkpoint.run_config().to_dict()


def test_a_run_writes_its_config_yaml_and_a_run_started_from_it_has_the_recorded_recipe(tmp_path, capsys,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = ["--dataset", "sample", "--sample-cars", "3", "--sample-image-size", "192x128", "--preset", "cpu",
            "--input-size", "128x64", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-tta"]
    code, _, err = run_cli(["train", *tiny, "--run-name", "first"], capsys)
    assert code == 0, err
    saved, recorded = recorded_recipe(tmp_path / "output" / "models" / "first")
    for name, value in saved.items():
        expected = recorded[name]
        assert value == (f"{expected[0]}x{expected[1]}" if name == "input_size" else expected), name

    config_file = tmp_path / "output" / "models" / "first" / "config.yaml"
    code, _, err = run_cli(["train", "--config", config_file, "--run-name", "second", "--dataset", "sample",
                            "--sample-cars", "3", "--sample-image-size", "192x128"], capsys)
    assert code == 0, err
    _, again = recorded_recipe(tmp_path / "output" / "models" / "second")
    assert {k: v for k, v in again.items() if k != "run_name"} == {k: v for k, v in recorded.items()
                                                                    if k != "run_name"}


# --------------------------------------------------------------------------- a hostile settings file


def billion_laughs(levels: int) -> str:
    """The YAML "billion laughs": each level a list of nine aliases of the one before (9**levels strings)."""
    keys = ["lr", "epochs", "seed", "folds", "workers", "width", "threshold", "patience", "device"][:levels]
    lines = [f'{keys[0]}: &l0 [' + ",".join(['"lol"'] * 9) + "]"]
    lines += [f"{key}: &l{n} [" + ",".join([f"*l{n - 1}"] * 9) + "]" for n, key in enumerate(keys[1:], 1)]
    return "\n".join(lines) + "\n"


def refusal(path, capsys) -> str:
    """The one line `train --config PATH --print-config` fails with (exit 1, no traceback)."""
    code, _, err = run_cli(["train", "--config", path, "--print-config"], capsys)
    line = one_line_error(err)
    assert code == 1, line
    return line


@pytest.mark.reliability
def test_a_billion_laughs_file_is_refused_before_anything_is_expanded(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs(9))
    assert len(path.read_bytes()) < 500

    def limit_memory() -> None:  # expanded, it would need far more: a regression fails here, not the machine
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    process = start_main(["train", "--config", path, "--print-config"], tmp_path, preexec_fn=limit_memory)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, out + err
    line = one_line_error(err)
    assert str(path) in line and "line 1: anchors and aliases" in line


@pytest.mark.reliability
@pytest.mark.parametrize("text", [billion_laughs(4), "epochs: &n 5\nfolds: *n\n", "epochs: !!int &n 5\n"])
def test_anchors_and_aliases_are_refused_in_a_short_line(text, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("anchors.yaml").write_text(text)

    line = refusal("anchors.yaml", capsys)

    assert line.startswith("error: anchors.yaml: line 1: anchors and aliases") and len(line) < 200


@pytest.mark.reliability
@pytest.mark.parametrize("text", ["[" * 10_000, "epochs: " + "{a: " * 5_000, "input_size: [[384, 256]]\n"])
def test_nesting_deeper_than_a_settings_file_goes_is_refused_without_recursion(text, tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text(text)

    line = refusal(path, capsys)

    assert f"{path}: line 1: nested too deep" in line


@pytest.mark.reliability
def test_a_fifo_as_the_settings_file_is_refused_at_once(tmp_path, capsys):
    fifo = tmp_path / "settings.yaml"
    os.mkfifo(fifo)  # opening it to read would wait for a writer that never comes
    code, _, err = run_cli(["train", "--config", fifo], capsys)
    assert code == 1
    message = one_line_error(err)
    assert str(fifo) in message and "regular file" in message


@pytest.mark.reliability
def test_a_file_over_64_kib_is_refused_naming_its_size_and_one_of_64_kib_is_read(tmp_path, capsys):
    comments = "# " + "x" * 61 + "\n"  # 64 bytes: a file of comments is valid YAML with no settings
    path = tmp_path / "big.yaml"
    path.write_text(comments * 1024)
    assert read_settings_file(path) == {}

    path.write_text(comments * 1024 + "\n")
    line = refusal(path, capsys)
    assert f"{path}: 65,537 bytes, too large for a settings file (at most 64 KiB" in line

    with path.open("r+b") as file:
        file.truncate(30 << 20)  # 30 MB, sparse: refused from its size, not after reading it
    assert f"{path}: 31,457,280 bytes, too large" in refusal(path, capsys)


class Written(str):
    """A value as YAML text, for what yaml.safe_dump cannot write (an int of 6,000 digits)."""


HUGE = Written("0x" + "f" * 5000)
INT_FIELDS = ("batch_size", "epochs", "max_steps", "coarse_epochs", "early_stopping_patience", "folds", "fold",
              "seed", "workers", "encoder_freeze_epochs")
# Values of the wrong YAML type, or out of every setting's range, for each kind of setting.
WRONG = {
    "any": [[1, 2, 3], {"a": 1}, "\0", "x" * 5000 + "\0", datetime.date(2024, 1, 1)],
    "bool": ["yes", "true", 1, 0.0],
    "size": [True, 1.5, [384.0, 256], [True, 256], [384, 256, 1], 10**12, 2**64, "384x256x3", "0x256"],
    "choice": [5, True, "nope", "auto\0"],
    "text": [5, 1.5, True, ""],
    "path": [5, 1.5, True, ""],
    "whole": [True, "many", 1.5, 10**15, 2**64, HUGE, float("inf"), -1],
    "number": [True, "many", float("inf"), float("nan"), "1e999", -1, HUGE],
}


def wrong_values(field: str) -> list:
    nulls = [] if FIELDS[field].optional else [None]
    return WRONG["any"] + WRONG[FIELDS[field].kind] + nulls


SETTINGS = [name for name in FIELDS if name not in settings_file.NOT_IN_FILE]


@pytest.mark.reliability
@pytest.mark.parametrize("field", SETTINGS)
def test_every_setting_refuses_wrong_values_in_one_short_line_naming_the_file_and_key(field, tmp_path, capsys,
                                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    for value in wrong_values(field):
        text = f"{field}: {value}\n" if isinstance(value, Written) else yaml.safe_dump({field: value})
        Path("s.yaml").write_text(text)

        line = refusal("s.yaml", capsys)

        assert line.startswith(f"error: s.yaml: {field}: ") and len(line) < 200, (value, line)


def test_every_setting_has_one_entry_in_the_table_of_fields_of_the_kind_its_type_says():
    assert tuple(FIELDS) == tuple(f.name for f in dataclasses.fields(Config)), "one entry a field, in Config's order"
    assert {name for name, field in FIELDS.items() if field.kind == "whole"} == set(INT_FIELDS)
    assert {name for name, field in FIELDS.items() if field.kind == "bool"} == {
        name for name in FIELDS if isinstance(getattr(Config, name), bool)}
    assert {name for name, field in FIELDS.items() if field.kind == "size"} == set(SIZE_FIELDS)
    assert all(FIELDS[name].optional == ("None" in str(f.type)) for f in dataclasses.fields(Config)
               for name in [f.name])
    assert all((field.choices is None) == (field.kind != "choice") for field in FIELDS.values())
    assert all((field.parse is None) == (field.kind in ("bool", "choice")) for field in FIELDS.values())


@pytest.mark.parametrize("field", SETTINGS)
def test_a_config_refuses_what_a_file_refuses_for_each_setting_naming_it_in_one_line(field):
    for value in wrong_values(field):
        with pytest.raises(ConfigError) as error:
            dataclasses.replace(preset("cpu"), **{field: value})
        line = str(error.value)
        assert line.startswith(field.replace("_", " ")) and "\n" not in line and len(line) < 200, (value, line)


def test_values_of_the_right_type_still_load(tmp_path):
    path = tmp_path / "fine.yaml"
    path.write_text("device: cuda:1\ndata_dir: my data\ninput_size: [384, 256]\ncrop: null\nmax_time: 600.0\n"
                    "epochs: '5'\nmomentum: 0.5\nweight_decay: 0\namp: 'off'\nseed: 4294967295\nfold: 2\n"
                    "photo_size: 1918x1280\ntune_threshold: false\n")

    settings = read_settings_file(path)

    assert settings["device"] == "cuda:1" and settings["data_dir"] == Path("my data")
    assert settings["input_size"] == (384, 256) and settings["crop"] is None and settings["max_time"] == 600.0
    assert (settings["epochs"], settings["momentum"], settings["weight_decay"]) == (5, 0.5, 0.0)
    assert (settings["amp"], settings["seed"], settings["fold"]) == ("off", 2**32 - 1, 2)
    assert settings["photo_size"] == (1918, 1280) and settings["tune_threshold"] is False


@pytest.mark.reliability
def test_unknown_keys_are_named_short_and_at_most_five(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    keys = [f"k{n}" for n in range(3000)]
    Path("keys.yaml").write_text("".join(f"{key}: 1\n" for key in keys) + '? "' + "x" * 20_000 + '\\n"\n: 1\n')

    line = refusal("keys.yaml", capsys)

    assert line.startswith("error: keys.yaml: unknown settings k0, k1, k2, k3, k4 and 2996 more") and len(line) < 200


def test_an_unknown_key_that_is_not_a_plain_word_is_quoted(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text('"learning rate": 0.1\n')
    with pytest.raises(ConfigError, match="unknown setting 'learning rate'"):
        read_settings_file(path)


@pytest.mark.reliability
@pytest.mark.parametrize("flag, value", [("--epochs", "1000000000000000"), ("--input-size", "1000000000000"),
                                         ("--device", "cuda 0")])
def test_a_flag_refuses_the_same_huge_or_malformed_values_as_the_file(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(["train", flag, value, "--print-config"], capsys)
    assert exit_.value.code == 2


YAML_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=2), max_leaves=4)


@pytest.mark.reliability
@hypothesis.settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.sampled_from(SETTINGS), YAML_VALUES, max_size=3))
def test_whatever_a_file_holds_the_command_line_takes_it_or_refuses_it_in_one_line(values, tmp_path, capsys):
    path = tmp_path / "any.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")

    code, _, err = run_cli(["train", "--config", path, "--print-config"], capsys)

    assert code == 0 or (code == 1 and len(one_line_error(err)) < 200 + len(str(path))), err


@pytest.mark.reliability
def test_a_setting_written_twice_is_refused_not_silently_the_last(tmp_path, capsys):
    settings = tmp_path / "twice.yaml"
    settings.write_text("epochs: 1\ninput_size: [384, 256]\nlr: 0.001\nepochs: 2\n")
    code, _, err = run_cli(["train", "--config", settings], capsys)
    assert code == 1
    message = one_line_error(err)
    assert str(settings) in message and "line 4" in message and "epochs" in message and "twice" in message
    settings.write_text("epochs: 1\ninput_size: [384, 256]\nlr: 0.001\n")
    assert read_settings_file(settings)["epochs"] == 1, "a size's list does not confuse keys with values"
