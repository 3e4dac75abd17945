"""Every setting of a run in one table: what kind of value it takes, the parser of its text, its help.

`FIELDS` holds one `Field` per `Config` field, and three readers check values against it alike: the
flags (`carvana.run.flags` take each flag's type, choices and help from it), a settings file
(`carvana.run.settings_file`: a YAML value's type, then the same parser) and `Config` itself (a
value from code or a checkpoint gets the checks of its flag's text). A parser takes text and raises
argparse.ArgumentTypeError saying what the text is not; argparse names the flag, the file reader
the file and key, `Config` the setting.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carvana.core.durations import parse_duration
from carvana.core.errors import ConfigError
from carvana.core.geometry import Size
from carvana.models.specs import ENCODER_WEIGHTS, MODEL_NAMES, UPSAMPLE_MODES

PRESET_NAMES = ("unet_original", "unet1024", "cpu", "unet_resnet34")  # carvana.run.config.PRESETS
OPTIMIZERS = ("sgd", "rmsprop", "adam")
SCHEDULERS = ("plateau", "cosine", "none")
AMP_MODES = ("auto", "off", "fp16", "bf16")
MEMORY_FORMATS = ("auto", "channels_last", "nchw")  # auto: the fastest here (carvana.models.fastest_layout)
# What carvana.predict.cleanup may do to a predicted mask: keep its largest region, fill its holes, both.
MASK_CLEANUPS = ("none", "largest", "fill", "largest+fill")

SHOWN_LENGTH = 60  # the most of a value a message quotes: a one-line error never echoes a huge value
MAX_COUNT = 10**9  # epochs, steps, batch, workers, folds: beyond any run, within what torch and numpy count
MAX_SIDE = 32768  # pixels a side: 17x a Carvana photo's width; far larger overflow the models' size arithmetic
SEED_LIMIT = 2**32  # numpy, scikit-learn and the per-epoch seeds take seeds in [0, 2**32)
RUN_NAME_MAX_LENGTH = 100
RUN_NAME_PUNCTUATION = "._-+=@"


# --------------------------------------------------------------------------- how a value is shown


def quoted(text: str) -> str:
    """`text` as a message quotes it: repr, cut to SHOWN_LENGTH characters."""
    shown = repr(text)
    return shown if len(shown) <= SHOWN_LENGTH else shown[:SHOWN_LENGTH - 4] + "..." + shown[-1]


def cut(text: str) -> str:
    """A message (a library's, a number's text) on one line, at most twice SHOWN_LENGTH characters."""
    text = " ".join(text.split())
    return text if len(text) <= 2 * SHOWN_LENGTH else text[:2 * SHOWN_LENGTH - 3] + "..."


def shown(value: Any) -> str:
    """A value (from YAML, code or a checkpoint) as a message shows it, in at most about SHOWN_LENGTH characters."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return quoted(value)
    if isinstance(value, int) and value.bit_length() > 3 * SHOWN_LENGTH:  # and str() raises past 4,300 digits
        return f"a {round(value.bit_length() * 0.30103):,}-digit number"
    if isinstance(value, (int, float)):
        return cut(str(value))
    kinds = {list: "a list", dict: "a mapping", set: "a set", bytes: "binary data", tuple: "a tuple"}
    return kinds.get(type(value), f"a {type(value).__name__}")


# --------------------------------------------------------------------------- the parsers of text


def _number(text: str, kind: Callable[[str], Any], what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not {what}")
    return value


def _whole(least: int, most: int = MAX_COUNT) -> Callable[[str], int]:
    """The parser of whole numbers in least..most (most: a count's limit, or a range's end it names)."""
    what = f"a whole number of at least {least}" if most == MAX_COUNT else f"a whole number in {least}..{most}"

    def parse(text: str) -> int:
        value = _number(text, int, what)
        if value < least or (value > most and most != MAX_COUNT):
            raise argparse.ArgumentTypeError(f"{quoted(text)} is not {what}")
        if value > most:
            raise argparse.ArgumentTypeError(f"{quoted(text)} is more than {MAX_COUNT:,}")
        return value
    return parse


def _real(what: str, within: Callable[[float], bool]) -> Callable[[str], float]:
    """The parser of finite numbers for which `within` holds; `what` says which, for the message."""
    def parse(text: str) -> float:
        value = _number(text, float, what)
        if not within(value):
            raise argparse.ArgumentTypeError(f"{quoted(text)} is not {what}")
        return value
    return parse


positive_int, non_negative_int, seed_int = _whole(1), _whole(0), _whole(0, SEED_LIMIT - 1)
positive_float = _real("a finite number above 0", lambda value: value > 0)
non_negative_float = _real("a finite number of at least 0", lambda value: value >= 0)
below_one = _real("a number of at least 0 and below 1", lambda value: 0.0 <= value < 1.0)  # a momentum
# A validation share, a probability threshold; a share of the data.
open_fraction = _real("a number between 0 and 1 (both excluded)", lambda value: 0.0 < value < 1.0)
share = _real("a number above 0 and at most 1", lambda value: 0.0 < value <= 1.0)


def duration(text: str) -> float:
    """Seconds from `90s`, `10m`, `1.5h`, `1h30m` (a unit is required: see carvana.core.durations)."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{quoted(text)} {e}") from None


def size(text: str) -> Size:
    try:
        value = Size.parse(text)
    except (ConfigError, ValueError):  # ValueError: a side of more digits than Python converts
        raise argparse.ArgumentTypeError(
            f"{quoted(text)} is not a size: give WIDTHxHEIGHT in whole pixels above 0, e.g. 384x256, or one number"
        ) from None
    if max(value) > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not a size: a side is at most {MAX_SIDE} pixels")
    return value


def device_name(text: str) -> str:
    """A device's name as `--device` takes it: one short word (whether the machine has it is checked where
    the run starts, `carvana.core.device`)."""
    if not (0 < len(text) <= 32 and text.isascii() and text.isprintable() and " " not in text):
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not a device name (auto, cpu, cuda or cuda:N)")
    return text


def folder(text: str) -> Path:
    """A folder's path: not empty, and no NUL character (which no file system takes)."""
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not a folder path")
    return Path(text)


def encoder_weights(text: str) -> str:
    """imagenet, none, or a weights file's path (whether the file is there is checked when a new run loads
    it, `carvana.models.pretrained`: predicting from the run's checkpoint needs no such file)."""
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not {', '.join(ENCODER_WEIGHTS)} or a file's path")
    return text


def run_name_problem(name: str) -> str | None:
    """Why `name` cannot name a run's folders (None if it can).

    A run name becomes one folder under output/models and one under logs; `--resume last` finds runs
    one level down. Path separators would nest it deeper, `.`/`..` and a leading dot would point
    elsewhere or hide it, and a leading `-` reads as a flag; letters, digits and ._-+=@ are safe.
    """
    if not name:
        return "empty; give letters, digits and ._-+=@"
    if "/" in name or "\\" in name:
        return "contains a path separator; a run name is one folder name (letters, digits and ._-+=@)"
    if name.startswith("."):
        return "starts with '.'; use a name that starts with a letter or digit"
    if name.startswith("-"):
        return "starts with '-', which reads as a flag; use a name that starts with a letter or digit"
    if len(name) > RUN_NAME_MAX_LENGTH:
        return f"longer than {RUN_NAME_MAX_LENGTH} characters"
    bad = sorted({c for c in name if not (c.isalnum() or c in RUN_NAME_PUNCTUATION)})
    if bad:
        return f"contains {' '.join(repr(c) for c in bad)}; use only letters, digits and ._-+=@"
    return None


def run_name(text: str) -> str:
    problem = run_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{quoted(text)}: {problem}")
    return text


# --------------------------------------------------------------------------- the table


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number_text(value: Any, what: str) -> str:
    """A number as its flag's text would give it; anything else refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise argparse.ArgumentTypeError(f"{shown(value)}: must be {what}")
    if isinstance(value, int) and value.bit_length() > 64:  # beyond every setting (and str() of 4,300 digits raises)
        raise argparse.ArgumentTypeError(f"{shown(value)} is too large")
    return str(value)


@dataclass(frozen=True)
class Field:
    """What one `Config` field takes. `kind`: number, whole, bool, size, choice, text or path."""

    kind: str
    parse: Callable[[str], Any] | None = None  # its text's parser (its flag's type); None for bool and choice
    help: str | None = None  # its flag's --help
    choices: tuple[str, ...] | None = None
    optional: bool = False  # None (YAML's null) leaves it unset
    parse_number: Callable[[str], Any] | None = None  # a number given as a number, if not as `parse` reads it

    def check(self, value: Any, text: bool = False) -> Any:
        """`value` as this field takes it, checked as its flag checks text (ArgumentTypeError if it cannot be).

        A number is checked as its text (`str(value)`), a size as `WxH`. `text`: a value from a file, where
        text is also read as the flag reads it (`384x256`, `1h30m`, `'5'`) and one number is a square size.
        """
        if value is None:
            if self.optional:
                return None
            raise argparse.ArgumentTypeError("null: give a value (or leave the setting out for the preset's)")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise argparse.ArgumentTypeError(f"{shown(value)}: must be true or false")
            return value
        if self.kind == "choice":
            if isinstance(value, str) and value in self.choices:
                return value
            hint = " (quote it: YAML reads a bare on/off/yes/no as true/false)" if isinstance(value, bool) else ""
            raise argparse.ArgumentTypeError(f"{shown(value)}: unknown (choose from {', '.join(self.choices)}){hint}")
        if self.kind in ("text", "path"):
            if not isinstance(value, (str, Path) if self.kind == "path" else str):
                raise argparse.ArgumentTypeError(f"{shown(value)}: must be text")
            return self.parse(str(value))
        if text and isinstance(value, str):
            return self.parse(value)
        if self.kind == "size":
            return self.parse(self._size_text(value, text))
        return (self.parse_number or self.parse)(_number_text(value, "a whole number" if self.kind == "whole"
                                                               else "a number"))

    @staticmethod
    def _size_text(value: Any, text: bool) -> str:
        """A Size as its flag's text, `WxH`; from a file, [width, height] or one number (a square)."""
        if isinstance(value, list if text else Size) and len(value) == 2 and all(_is_int(side) for side in value):
            return "x".join(_number_text(side, "a whole number") for side in value)
        if text and _is_int(value):
            return _number_text(value, "a whole number")
        raise argparse.ArgumentTypeError(f"{shown(value)}: must be WIDTHxHEIGHT (e.g. 384x256) or [width, height] "
                                         "in whole pixels")


def _choice(choices: tuple[str, ...], help: str | None = None) -> Field:
    return Field("choice", choices=choices, help=help)


FIELDS: dict[str, Field] = {  # in Config's order
    "preset": _choice(PRESET_NAMES, "unet_original, unet1024, cpu, or unet_resnet34 (downloads ImageNet weights "
                                    "once) (default: unet1024 with CUDA, cpu without)"),
    "model": _choice(MODEL_NAMES),
    "input_size": Field("size", size, (
        "model input WxH, e.g. 572 or 384x256 (default: the preset's pixel count at the photos' shape; "
        "the preset's own size for 1918x1280 photos)")),
    "width": Field("number", positive_float, "channel multiplier (1 = the paper's widths)"),
    "upsample": _choice(UPSAMPLE_MODES, (
        "encoder U-Nets: how each decoder block doubles its input: transpose (2x2 transposed convolution, "
        "default), pixelshuffle (convolution + pixel shuffle) or bilinear (+ convolution)")),
    "attention": Field("bool", help=(
        "attention gates on the skip features of the three deepest decoder blocks (every model)")),
    "encoder_weights": Field("text", encoder_weights, (
        "encoder U-Nets: the encoder's starting weights for a new run: imagenet (torchvision's, downloaded once "
        "into torch hub's cache), none (random, default), or a file of them (offline: the downloaded .pth)")),
    "encoder_lr_scale": Field("number", positive_float, (
        "encoder U-Nets: the encoder's learning rate as a share of --lr (e.g. 0.1 for a pretrained encoder)")),
    "encoder_freeze_epochs": Field("whole", non_negative_int, (
        "encoder U-Nets: keep the encoder's weights fixed for the first N epochs (the decoder learns first)")),
    "crop": Field("size", size, (
        "full-resolution training (unet1024): train on random WxH crops of the unresized photos; validate and "
        "predict each photo whole, mirror-padded to a size the net takes (1918x1280 -> 1920x1280), no resizing"),
        optional=True),
    "photo_size": Field("size", size, optional=True),
    "optimizer": _choice(OPTIMIZERS),
    "lr": Field("number", positive_float, "learning rate"),
    "momentum": Field("number", below_one),
    "weight_decay": Field("number", non_negative_float),
    "scheduler": _choice(SCHEDULERS),
    "batch_size": Field("whole", positive_int),
    "epochs": Field("whole", positive_int, (
        "epochs to train (default: the preset's; with --max-steps or --max-time and no --epochs, the budget "
        "alone decides)")),
    "max_steps": Field("whole", positive_int, "stop after N optimiser steps over the whole run, resumed parts "
                       "included", optional=True),
    "max_time": Field("number", duration, (
        "stop training within this much training time over the whole run, resumed parts included "
        "(e.g. 90s, 10m, 1.5h, 9h, 1h30m); scoring and predicting come on top"),
        optional=True, parse_number=positive_float),  # a number is seconds, as config.yaml writes it
    "epochs_cap": Field("bool"),
    "grad_clip": Field("number", positive_float, "max gradient norm", optional=True),
    "coarse_epochs": Field("whole", non_negative_int, (
        "train the first N epochs at half the input size (4x faster steps), the rest at the input size "
        "(progressive resizing; default: the preset's, 0 = off; skipped when --epochs leaves no epoch after them)")),
    "bce_weight": Field("number", non_negative_float),
    "dice_weight": Field("number", non_negative_float),
    "amp": _choice(AMP_MODES, "mixed precision: auto (bf16/fp16 on CUDA, bf16 on CPUs that have it), off, fp16, "
                              "bf16"),
    "memory_format": _choice(MEMORY_FORMATS, (
        "auto (default): the faster of NCHW and channels_last (and with --amp auto of fp32 and bf16 where the "
        "device has bf16) for this model, timed in a few seconds once per machine and cached; or force one")),
    "early_stopping_patience": Field("whole", positive_int, "stop after this many epochs without a better "
                                     "validation Dice", optional=True),
    "data_dir": Field("path", folder, (
        "the data dir: Kaggle's layout, or Kaggle's zip files (a notebook's /kaggle/input/carvana-image-masking-"
        "challenge, extracted once into OUTPUT/data; never written) (default: input); predict reads its test set")),
    "output_dir": Field("path", folder, "checkpoints, cache, the submission, and Kaggle's zip files extracted "
                        "(default: output)"),
    "log_dir": Field("path", folder, "TensorBoard logs (default: logs)"),
    "validation_size": Field("number", open_fraction, "fraction of cars held out (0.2)"),
    "folds": Field("whole", positive_int, (
        "train K models on a K-fold split by car, each validated on its own unseen cars, then score the "
        "out-of-fold predictions of every car (default: 1, one split by --validation-size)")),
    "fold": Field("whole", positive_int, optional=True),  # within 1..folds: checked by Config
    "sample_size": Field("number", share, "fraction of the cars to use (1.0)"),
    "augment": Field("bool"),
    "soft_targets": Field("bool", help=(
        "train on the car's share of each output pixel (0..1) instead of 0/1 masks: sharper edges once "
        "up-sampled (default: the preset's)")),
    "cache": Field("bool"),
    "seed": Field("whole", seed_int),
    "workers": Field("whole", non_negative_int, "data-loading worker processes"),
    "device": Field("text", device_name, "auto, cpu, cuda, cuda:1, ..."),
    "sync_bn": Field("bool"),
    "threshold": Field("number", open_fraction, (
        "probability above which a pixel is the car (default: chosen on the validation cars after training "
        "and saved with the checkpoint; 0.5 for a checkpoint without one)")),
    "tune_threshold": Field("bool"),
    "mask_cleanup": _choice(MASK_CLEANUPS, (
        "before up-sampling: keep only the largest car region (largest), fill holes enclosed by the car "
        "(fill), or both (default: none; every run prints each one's validation Dice)")),
    "tta": Field("bool", help=(
        "average with the horizontally flipped image: one more pass of the model (default: the preset's)")),
    "run_name": Field("text", run_name, "name of the run's log and checkpoint folders", optional=True),
}


def fields_of_kind(kind: str) -> tuple[str, ...]:
    """The names of the fields of `kind` (e.g. "size", "path"), in Config's order."""
    return tuple(name for name, field in FIELDS.items() if field.kind == kind)
