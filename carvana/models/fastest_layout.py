"""The machine's fastest layout: the memory format (NCHW or channels_last) and, where `--amp auto` leaves
a choice, the number format (fp32 or bf16) in which a run's model trains fastest here.

Neither layout wins everywhere (channels_last: 1.15x on an AMD EPYC, 1.5x slower on a 2-core Xeon;
docs/benchmarks.md), so under `auto` each candidate times a few training steps of the run's own model
and the fastest wins; bf16 competes only where the device computes it natively. The answer is kept
in a JSON file (`cache_file()`) keyed by device, threads, torch, model, input, batch and settings; a
file that cannot be read or written means timing again, never an error. Under torchrun rank 0
decides and every process takes its answer.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from carvana.core import distributed
from carvana.core.atomic import atomic_write_text
from carvana.core.device import CPUINFO, Precision, resolve_precision
from carvana.core.errors import CarvanaError
from carvana.core.geometry import Size
from carvana.models.step_timing import Candidate, NotTimed, time_training_steps

log = logging.getLogger(__name__)

FORCING_FLAGS = {"channels_last": "--channels-last", "nchw": "--no-channels-last"}
CACHE_DIR_VARIABLE = "CARVANA_CACHE_DIR"  # the cache's folder (tests point it at a temporary one)
CACHE_NAME = "fastest.json"
CACHE_VERSION = 1

# Seconds per step of each candidate, in their order; NotTimed when they cannot be timed.
Timer = Callable[[Sequence[Candidate]], Sequence[float]]

_CHOSEN: dict[tuple[str, str], "Layout"] = {}  # (cache file, key) -> this process's answer


@dataclass(frozen=True)
class Layout:
    """How a model runs: its number format and memory layout, and why (for the run's banner)."""

    precision: Precision
    channels_last: bool
    why: str = ""

    def describe(self) -> str:
        """E.g. `precision bf16, NCHW (forced by --no-channels-last)`."""
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"precision {self.precision.name}, {layout}" + (f" ({self.why})" if self.why else "")


def candidates(device: torch.device, amp: str, memory_format: str) -> list[Candidate]:
    """The layouts a run may take, the usual one first (amp's precision, channels_last unless forced off):
    both memory formats for `auto`, and fp32 beside the bf16 that `amp` `auto` gives."""
    usual = resolve_precision(amp, device)
    precisions = [usual]
    if amp == "auto" and usual.dtype == torch.bfloat16:
        precisions.append(resolve_precision("off", device))  # fp32
    formats = [True, False] if memory_format == "auto" else [memory_format == "channels_last"]
    return [Candidate(precision, channels_last) for precision in precisions for channels_last in formats]


def choose_layout(model: nn.Module, device: torch.device, amp: str, memory_format: str, input_size: Size | None,
                  batch_size: int, *, timer: Timer | None = None, cache: Path | None = None) -> Layout:
    """The layout `model` runs in on `device`: the one the settings force, else the fastest candidate for
    training steps at `input_size` with `batch_size` (from the cache file, else timed with `timer`,
    default `time_training_steps`). Under torchrun every process calls it (as each builds its classifier and
    predictors) and gets rank 0's answer; rank 0 alone may call it only for a key this process has decided
    already (the folds' out-of-fold scoring, after their training)."""
    options = candidates(device, amp, memory_format)
    forced = _forced(amp, memory_format)
    if len(options) == 1:
        return Layout(options[0].precision, options[0].channels_last, forced)
    path = cache or cache_file()
    key = cache_key(model, device, amp, memory_format, input_size, batch_size)
    if (str(path), key) not in _CHOSEN:
        if timer is None:
            timer = _real_timer(model, device, input_size, batch_size, path)
        leader = distributed.is_main() or not distributed.is_started()
        decided = _decide(options, key, path, timer, forced) if leader else None
        _CHOSEN[(str(path), key)] = distributed.broadcast(decided)
    return _CHOSEN[(str(path), key)]


def cache_file() -> Path:
    """$CARVANA_CACHE_DIR/fastest.json, else $XDG_CACHE_HOME/carvana/fastest.json, else ~/.cache/carvana/..."""
    folder = os.environ.get(CACHE_DIR_VARIABLE)
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "carvana")
    return Path(folder) / CACHE_NAME


def cache_key(model: nn.Module, device: torch.device, amp: str, memory_format: str, input_size: Size | None,
              batch_size: int) -> str:
    """What decides the fastest layout, as one line of text."""
    parameters = sum(p.numel() for p in model.parameters())
    return " | ".join([
        f"{device.type} {_device_name(device)}", f"{os.cpu_count()} cpus, {torch.get_num_threads()} threads",
        f"torch {torch.__version__}", f"{type(model).__name__} of {parameters} parameters", f"input {input_size}",
        f"batch {batch_size}", f"amp {amp}", f"memory format {memory_format}",
    ])


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _forced(amp: str, memory_format: str) -> str:
    """What the settings force, as the flags that would: `forced by --amp off, --no-channels-last`."""
    flags = ([f"--amp {amp}"] if amp != "auto" else []) + ([FORCING_FLAGS[memory_format]]
                                                           if memory_format != "auto" else [])
    return f"forced by {', '.join(flags)}" if flags else ""


def _real_timer(model: nn.Module, device: torch.device, input_size: Size | None, batch_size: int,
                path: Path) -> Timer:
    def timer(options: Sequence[Candidate]) -> Sequence[float]:
        if input_size is None:
            raise NotTimed("no input size to time at")
        log.info(f"Timing the model's {len(options)} layouts on this machine, once (kept in {_shown(path)}) ...")
        return time_training_steps(model, device, options, input_size, batch_size)
    return timer


def _decide(options: list[Candidate], key: str, path: Path, timer: Timer, forced: str) -> Layout:
    """The layout from the cache file at `path`, else timed now (and written there)."""
    names = [option.name for option in options]
    entry = _valid_entry(_read_entries(path).get(key), names)
    fresh = entry is None
    if entry is None:
        entry = _timed_entry(names, timer, options)
        where = _store(path, key, entry)
    else:
        where = f"from {_shown(path)}"
    chosen = options[names.index(entry["choice"])]
    how = _how_chosen(entry, fresh)
    return Layout(chosen.precision, chosen.channels_last, "; ".join(part for part in (forced, how, where) if part))


def _timed_entry(names: list[str], timer: Timer, options: list[Candidate]) -> dict[str, Any]:
    """The cache entry of timing `options` now: the fastest and every one's seconds per step (None: out of
    memory), or the usual one and why they were not timed."""
    try:
        seconds = list(timer(options))
        if all(math.isinf(s) for s in seconds):
            raise NotTimed("out of memory")
    except NotTimed as reason:
        return {"choice": names[0], "not_timed": str(reason)}
    return {"choice": names[seconds.index(min(seconds))],
            "seconds_per_step": {name: None if math.isinf(s) else s for name, s in zip(names, seconds)}}


def _how_chosen(entry: dict[str, Any], fresh: bool) -> str:
    """`fastest of 4 timed here: 1.21x bf16 NCHW`: how many were timed and how far ahead of the next."""
    if "not_timed" in entry:
        return f"not timed: {entry['not_timed']}; the usual choice"
    seconds = {name: s for name, s in entry["seconds_per_step"].items() if s is not None}
    best = seconds[entry["choice"]]
    others = sorted((s, name) for name, s in seconds.items() if name != entry["choice"])
    ahead = f": {others[0][0] / best:.2f}x {others[0][1]}" if others and best > 0 else ""
    return f"fastest of {len(entry['seconds_per_step'])} timed {'here' if fresh else 'on this machine'}{ahead}"


def _valid_entry(entry: Any, names: list[str]) -> dict[str, Any] | None:
    """A cache entry as written by `_decide` for these candidates, else None (to be timed again)."""
    if not isinstance(entry, dict) or entry.get("choice") not in names:
        return None
    if isinstance(entry.get("not_timed"), str):
        return entry
    seconds = entry.get("seconds_per_step")
    numbers = isinstance(seconds, dict) and sorted(seconds) == sorted(names) and all(
        s is None or (isinstance(s, (int, float)) and s >= 0) for s in seconds.values())
    return entry if numbers and seconds[entry["choice"]] is not None else None


def _read_entries(path: Path) -> dict[str, Any]:
    """The cache file's entries; none when it is missing, unreadable or not one of ours."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _store(path: Path, key: str, entry: dict[str, Any]) -> str:
    """Add `entry` to the cache file, atomically; says where it went, or why it did not."""
    entries = {**_read_entries(path), key: entry}
    try:
        atomic_write_text(path, json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1) + "\n")
    except (CarvanaError, OSError) as error:
        return f"not cached: {error}"
    return f"cached in {_shown(path)}"


def _shown(path: Path) -> str:
    """`path` with the home folder as ~."""
    home = os.path.expanduser("~")
    text = str(path)
    return "~" + text[len(home):] if home != "~" and text.startswith(home + os.sep) else text
