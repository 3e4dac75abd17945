"""The machine's fastest layout (`memory_format: auto`): the fastest candidate wins, the answer is cached
per machine and key, forced settings are not timed, and the setting reads from flags, files and old
checkpoints."""
from __future__ import annotations

import json
import re
import shutil
import textwrap
import time

import pytest
import torch
import yaml
from torch import nn

from carvana.core.device import cpu_has_native_bf16
from carvana.core.geometry import Size
from carvana.models import build_model
from carvana.models.fastest_layout import choose_layout
from carvana.models.step_timing import NotTimed
from carvana.predict.predictor import Predictor
from carvana.run.checkpoint import Checkpoint, save_checkpoint
from carvana.run.config import Config
from carvana.run.settings_file import read_settings_file, write_settings_file
from carvana.train.classifier import CarvanaClassifier
from cli_helpers import run_cli
from conftest import REPO_ROOT
from torchrun_helpers import run_torchrun, skip_without_gloo
from training_helpers import tiny_config

CPU = torch.device("cpu")
SMALL = Size(16, 16)


class FakeTimer:
    """Seconds per step by candidate name (others 1 s); counts the times it was asked."""

    def __init__(self, seconds: dict[str, float] | None = None):
        self.seconds = seconds or {}
        self.calls = 0

    def __call__(self, options):
        self.calls += 1
        return [self.seconds.get(option.name, 1.0) for option in options]


class SlowInOneLayout(nn.Module):
    """A tiny net that dawdles on inputs in one memory layout."""

    def __init__(self, slow_channels_last: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.slow_channels_last = slow_channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous(memory_format=torch.channels_last) == self.slow_channels_last:
            time.sleep(0.02)
        return self.conv(x)


def choose(tmp_path, timer=None, size=SMALL, amp="off", memory_format="auto", model=None):
    return choose_layout(model or nn.Conv2d(3, 1, 1), CPU, amp, memory_format, size, 2, timer=timer,
                         cache=tmp_path / "fastest.json")


@pytest.mark.parametrize("slow_channels_last", [True, False])
def test_a_model_slower_in_one_layout_trains_in_the_other(tmp_path, slow_channels_last):
    layout = choose(tmp_path, model=SlowInOneLayout(slow_channels_last))

    assert layout.channels_last is not slow_channels_last
    assert "fastest of 2 timed here" in layout.describe()


@pytest.mark.parametrize("fastest", ["fp32 NCHW", "fp32 channels_last", "bf16 NCHW", "bf16 channels_last"])
def test_the_fastest_candidate_is_chosen_among_precisions_where_the_cpu_has_bf16(tmp_path, fastest):
    if fastest.startswith("bf16") and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: amp auto times fp32 alone")
    timer = FakeTimer({fastest: 0.5, "bf16 channels_last": 0.8})

    layout = choose(tmp_path, timer, amp="auto")

    assert f"{layout.precision.name} {'channels_last' if layout.channels_last else 'NCHW'}" == fastest
    assert f"fastest of {4 if cpu_has_native_bf16() else 2} timed here" in layout.describe()


def test_the_answer_is_cached_and_a_later_process_reuses_it(tmp_path):
    timer = FakeTimer({"fp32 NCHW": 0.5})
    first = choose(tmp_path / "a", timer)
    assert choose(tmp_path / "a", timer) == first and timer.calls == 1

    (tmp_path / "b").mkdir()  # the same file elsewhere: as another process on this machine finds it
    shutil.copy(tmp_path / "a" / "fastest.json", tmp_path / "b" / "fastest.json")
    again = choose(tmp_path / "b", timer)

    assert timer.calls == 1
    assert not again.channels_last and "timed on this machine: 2.00x fp32 channels_last; from" in again.why
    assert "cached in" in first.why and "2.00x fp32 channels_last" in first.why


def test_another_input_size_or_batch_is_timed_again(tmp_path):
    timer = FakeTimer()
    choose(tmp_path, timer, size=Size(16, 16))
    choose(tmp_path, timer, size=Size(32, 16))
    choose_layout(nn.Conv2d(3, 1, 1), CPU, "off", "auto", SMALL, 4, timer=timer, cache=tmp_path / "fastest.json")

    assert timer.calls == 3
    assert len(json.loads((tmp_path / "fastest.json").read_text())["entries"]) == 3


@pytest.mark.parametrize("content", [b"\x00\xffnot json", b'{"version": 1, "entries": []}', b"[1, 2]", None])
def test_a_corrupt_cache_file_is_ignored_and_rewritten(tmp_path, content):
    path = tmp_path / "fastest.json"
    if content is None:  # an entry for this very key that is not one of ours
        choose(tmp_path / "earlier", FakeTimer())
        data = json.loads((tmp_path / "earlier" / "fastest.json").read_text())
        content = json.dumps({**data, "entries": {key: {"choice": "fp64 sideways"} for key in data["entries"]}})
        content = content.encode()
    path.write_bytes(content)
    timer = FakeTimer({"fp32 NCHW": 0.5})

    layout = choose(tmp_path, timer)

    assert timer.calls == 1 and not layout.channels_last
    (entry,) = json.loads(path.read_text())["entries"].values()
    assert entry["choice"] == "fp32 NCHW"


def test_a_cache_that_cannot_be_written_is_no_error(tmp_path):
    (tmp_path / "not-a-folder").write_text("")
    layout = choose(tmp_path / "not-a-folder", FakeTimer({"fp32 NCHW": 0.5}))

    assert not layout.channels_last and "not cached" in layout.why


@pytest.mark.parametrize("memory_format, described", [
    ("nchw", "precision fp32, NCHW (forced by --amp off, --no-channels-last)"),
    ("channels_last", "precision fp32, channels_last (forced by --amp off, --channels-last)"),
])
def test_forced_settings_are_not_timed_and_say_so(tmp_path, memory_format, described):
    def timer(options):
        raise AssertionError("timed")

    layout = choose(tmp_path, timer, memory_format=memory_format)

    assert layout.describe() == described
    assert not (tmp_path / "fastest.json").exists()


def test_a_model_too_slow_to_time_keeps_the_usual_layout_and_says_why(tmp_path):
    def timer(options):
        raise NotTimed("one step takes 40 s here")

    layout = choose(tmp_path, timer)

    assert layout.channels_last and "not timed: one step takes 40 s here" in layout.why


def test_prediction_takes_the_layout_its_training_chose(tmp_path):
    config = tiny_config(memory_format="auto", input_size=Size(64, 64), batch_size=2)
    classifier = CarvanaClassifier(config, progress=False)
    predictor = Predictor.for_config(config, build_model(config.model, config.width), progress=False)

    assert "timed here" in classifier.forward.layout.why
    assert predictor.forward.layout == classifier.forward.layout, "the same answer, not timed or read again"


def test_flags_set_the_memory_format_and_config_yaml_keeps_it(tmp_path, capsys):
    for flags, expected in ([], "auto"), (["--channels-last"], "channels_last"), (["--no-channels-last"], "nchw"), (
            ["--no-channels-last", "--memory-format", "auto"], "auto"):
        code, out, err = run_cli(["train", *flags, "--print-config"], capsys)
        assert code == 0, err
        assert yaml.safe_load(out)["memory_format"] == expected

    write_settings_file(tmp_path / "config.yaml", Config(memory_format="nchw"))
    assert read_settings_file(tmp_path / "config.yaml")["memory_format"] == "nchw"


@pytest.mark.parametrize("channels_last, expected", [(False, "nchw"), (True, "auto")])
def test_old_settings_with_channels_last_true_or_false_still_load(tmp_path, channels_last, expected):
    old = {key: value for key, value in Config().to_dict().items() if key != "memory_format"}
    old["channels_last"] = channels_last
    save_checkpoint(tmp_path / "old.pt", {"format": 1, "model_name": "unet1024", "width": 1.0, "epoch": 1,
                                          "global_step": 1, "config": old, "model_state": {"w": torch.zeros(1)}})
    (tmp_path / "config.yaml").write_text(f"channels_last: {str(channels_last).lower()}\n")

    assert Checkpoint.load(tmp_path / "old.pt").recipe.memory_format == expected
    assert read_settings_file(tmp_path / "config.yaml") == {"memory_format": expected}


@pytest.mark.slow
def test_under_torchrun_every_process_takes_rank_0s_choice(tmp_path):
    skip_without_gloo()
    script = tmp_path / "agree.py"
    script.write_text(textwrap.dedent("""
        import sys
        from pathlib import Path
        import torch
        from torch import nn
        from carvana.core import distributed
        from carvana.core.geometry import Size
        from carvana.models.fastest_layout import choose_layout
        distributed.start("cpu")
        rank = distributed.current().rank
        def timer(options):  # each rank would choose otherwise: rank 0 NCHW, rank 1 channels_last
            return [1.0 if option.channels_last == (rank == 0) else 0.5 for option in options]
        cache = Path(sys.argv[1]) / f"rank{rank}" / "fastest.json"
        layout = choose_layout(nn.Conv2d(3, 1, 1), torch.device("cpu"), "off", "auto", Size(16, 16), 2,
                               timer=timer, cache=cache)
        print(f"rank {rank}: channels_last={layout.channels_last}", flush=True)
        distributed.stop()
    """))
    result = run_torchrun([tmp_path], cwd=REPO_ROOT, program=script, timeout=120)

    assert result.returncode == 0, result.stderr
    # Both processes write to one pipe: their lines may interleave ("...=Falserank 1: ...").
    assert sorted(re.findall(r"rank (\d): channels_last=(True|False)", result.stdout)) == [
        ("0", "False"), ("1", "False")]
    assert not (tmp_path / "rank1").exists(), "rank 1 neither timed nor wrote"
