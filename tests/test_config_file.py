"""Runs you can repeat: `config.yaml` in every run folder, `train --config FILE`, `--print-config`."""
from __future__ import annotations

import yaml

from carvana.run.checkpoint import Checkpoint
from carvana.run.config import preset
from cli_helpers import one_line_error, run_cli


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
