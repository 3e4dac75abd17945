"""The command line's settings: what each flag's text may be, and one table of the flags that set `Config` fields.

`FLAGS` is the one place that says which flag sets which field, on which subcommands and with what
help; the parser (`carvana.cli`), the settings a command line gave (`given_settings`) and the flag
named in a message about a field (`flag_of`) are all read from it.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carvana.core.durations import parse_duration
from carvana.core.errors import ConfigError
from carvana.core.geometry import Size
from carvana.models.fastest_layout import MEMORY_FORMATS
from carvana.models.specs import MODEL_NAMES
from carvana.run.config import AMP_MODES, MASK_CLEANUPS, OPTIMIZERS, PRESETS, SCHEDULERS, SEED_LIMIT, run_name_problem

# --------------------------------------------------------------------------- flag values

SHOWN_LENGTH = 60  # the most of a value a message quotes: a one-line error never echoes a huge value
MAX_COUNT = 10**9  # epochs, steps, batch, workers, folds: beyond any run, within what torch and numpy count
MAX_SIDE = 32768  # pixels a side: 17x a Carvana photo's width; far larger overflow the models' size arithmetic


def quoted(text: str) -> str:
    """`text` as a message quotes it: repr, cut to SHOWN_LENGTH characters."""
    shown = repr(text)
    return shown if len(shown) <= SHOWN_LENGTH else shown[:SHOWN_LENGTH - 4] + "..." + shown[-1]


def _number(text: str, kind: Callable[[str], Any], what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not {what}")
    return value


def _count(text: str, least: int) -> int:
    what = f"a whole number of at least {least}"
    value = _number(text, int, what)
    if value < least:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not {what}")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is more than {MAX_COUNT:,}")
    return value


def positive_int(text: str) -> int:
    return _count(text, 1)


def non_negative_int(text: str) -> int:
    return _count(text, 0)


def seed_int(text: str) -> int:
    what = f"a whole number in 0..{SEED_LIMIT - 1}"
    value = _number(text, int, what)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not {what}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a finite number above 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not a finite number above 0")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float, "a finite number of at least 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not a finite number of at least 0")
    return value


def open_fraction(text: str) -> float:
    """A number strictly between 0 and 1 (a validation share, a probability threshold)."""
    value = _number(text, float, "a number between 0 and 1 (both excluded)")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not a number between 0 and 1 (both excluded)")
    return value


def share(text: str) -> float:
    """A share of the data: above 0, at most 1."""
    value = _number(text, float, "a number above 0 and at most 1")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not a number above 0 and at most 1")
    return value


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


def run_name(text: str) -> str:
    problem = run_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{quoted(text)}: {problem}")
    return text


# --------------------------------------------------------------------------- the table

TRAINING = ("run", "train")  # the subcommands that train
PREDICTING = ("run", "train", "predict")  # the subcommands that predict (train: the validation cars)
CUTTING_OUT = (*PREDICTING, "cutout")  # ... and the flags of those that `cutout` takes as well

# The --help section of each group of flags, in the order they are listed.
GROUPS = {
    "data": "data",
    "training": "training (flags override the preset)",
    "running": "running (batch, precision, device and folders)",
    "prediction": "prediction",
}


@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets a `Config` field."""

    name: str  # as typed: "--lr"
    field: str  # the Config field it sets
    commands: tuple[str, ...]  # the subcommands that take it
    group: str  # its --help section: a key of GROUPS
    help: str | None = None
    type: Callable[[str], Any] | None = None
    choices: Sequence[Any] | None = None
    metavar: str | None = None
    switch: Any = None  # a flag that takes no value: the value it gives the field (--no-augment: False)
    negatable: bool = False  # --tta / --no-tta: on or off, unset keeps the preset's
    implies: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # other fields it sets as well

    def argparse_options(self) -> dict[str, Any]:
        """The keywords of `add_argument` for this flag: every flag stores its field, None when not given."""
        options: dict[str, Any] = {"dest": self.field, "default": None, "help": self.help}
        if self.switch is not None:
            options.update(action="store_const", const=self.switch)
        elif self.negatable:
            options.update(action=argparse.BooleanOptionalAction)
        else:
            options.update({key: value for key, value in (("type", self.type), ("choices", self.choices),
                                                          ("metavar", self.metavar)) if value is not None})
        return options


FLAGS: tuple[Flag, ...] = (
    Flag("--data-dir", "data_dir", (*PREDICTING, "fetch"), "data", type=folder, help=(
        "the data dir: Kaggle's layout, or Kaggle's zip files (a notebook's /kaggle/input/carvana-image-masking-"
        "challenge, extracted once into OUTPUT/data; never written) (default: input); predict reads its test set")),
    Flag("--preset", "preset", TRAINING, "training", choices=tuple(PRESETS),
         help="unet_original, unet1024, or cpu (default: unet1024 with CUDA, cpu without)"),
    Flag("--model", "model", TRAINING, "training", choices=MODEL_NAMES),
    Flag("--input-size", "input_size", TRAINING, "training", type=size, help=(
        "model input WxH, e.g. 572 or 384x256 (default: the preset's pixel count at the photos' shape; "
        "the preset's own size for 1918x1280 photos)")),
    Flag("--crop", "crop", TRAINING, "training", type=size, metavar="WxH", help=(
        "full-resolution training (unet1024): train on random WxH crops of the unresized photos; validate and "
        "predict each photo whole, mirror-padded to a size the net takes (1918x1280 -> 1920x1280), no resizing")),
    Flag("--width", "width", TRAINING, "training", type=positive_float,
         help="channel multiplier (1 = the paper's widths)"),
    Flag("--epochs", "epochs", TRAINING, "training", type=positive_int, implies={"epochs_cap": True}, help=(
        "epochs to train (default: the preset's; with --max-steps or --max-time and no --epochs, the budget "
        "alone decides)")),
    Flag("--coarse-epochs", "coarse_epochs", TRAINING, "training", type=non_negative_int, metavar="N", help=(
        "train the first N epochs at half the input size (4x faster steps), the rest at the input size "
        "(progressive resizing; default: the preset's, 0 = off; skipped when --epochs leaves no epoch after them)")),
    Flag("--max-steps", "max_steps", TRAINING, "training", type=positive_int, metavar="N",
         help="stop after N optimiser steps over the whole run, resumed parts included"),
    Flag("--max-time", "max_time", TRAINING, "training", type=duration, metavar="DURATION", help=(
        "stop training within this much training time over the whole run, resumed parts included "
        "(e.g. 90s, 10m, 1.5h, 9h, 1h30m); scoring and predicting come on top")),
    Flag("--batch-size", "batch_size", PREDICTING, "running", type=positive_int),
    Flag("--lr", "lr", TRAINING, "training", type=positive_float, help="learning rate"),
    Flag("--optimizer", "optimizer", TRAINING, "training", choices=OPTIMIZERS),
    Flag("--scheduler", "scheduler", TRAINING, "training", choices=SCHEDULERS),
    Flag("--grad-clip", "grad_clip", TRAINING, "training", type=positive_float, help="max gradient norm"),
    Flag("--patience", "early_stopping_patience", TRAINING, "training", type=positive_int,
         help="stop after this many epochs without a better validation Dice"),
    Flag("--validation-size", "validation_size", TRAINING, "training", type=open_fraction,
         help="fraction of cars held out (0.2)"),
    Flag("--sample-size", "sample_size", TRAINING, "training", type=share, help="fraction of the cars to use (1.0)"),
    Flag("--folds", "folds", TRAINING, "training", type=positive_int, metavar="K", help=(
        "train K models on a K-fold split by car, each validated on its own unseen cars, then score the "
        "out-of-fold predictions of every car (default: 1, one split by --validation-size)")),
    Flag("--no-augment", "augment", TRAINING, "training", switch=False, help="train without augmentation"),
    Flag("--soft-targets", "soft_targets", TRAINING, "training", negatable=True, help=(
        "train on the car's share of each output pixel (0..1) instead of 0/1 masks: sharper edges once "
        "up-sampled (default: the preset's)")),
    Flag("--seed", "seed", TRAINING, "training", type=seed_int),
    Flag("--amp", "amp", CUTTING_OUT, "running", choices=AMP_MODES,
         help="mixed precision: auto (bf16/fp16 on CUDA, bf16 on CPUs that have it), off, fp16, bf16"),
    Flag("--memory-format", "memory_format", CUTTING_OUT, "running", choices=MEMORY_FORMATS, help=(
        "auto (default): the faster of NCHW and channels_last (and with --amp auto of fp32 and bf16 where the "
        "device has bf16) for this model, timed in a few seconds once per machine and cached; or force one")),
    Flag("--channels-last", "memory_format", CUTTING_OUT, "running", switch="channels_last",
         help="force channels_last (NHWC) memory format: --memory-format channels_last"),
    Flag("--no-channels-last", "memory_format", CUTTING_OUT, "running", switch="nchw",
         help="force NCHW memory format: --memory-format nchw"),
    Flag("--run-name", "run_name", TRAINING, "training", type=run_name,
         help="name of the run's log and checkpoint folders"),
    Flag("--workers", "workers", PREDICTING, "running", type=non_negative_int,
         help="data-loading worker processes"),
    Flag("--device", "device", CUTTING_OUT, "running", type=device_name,
         help="auto, cpu, cuda, cuda:1, ..."),
    Flag("--sync-bn", "sync_bn", TRAINING, "running", switch=True, help=(
        "under torchrun on GPUs: batch norm statistics over all the processes' batches (SyncBatchNorm)")),
    Flag("--no-cache", "cache", TRAINING, "running", switch=False, help=(
        "decode the photos every epoch instead of once into OUTPUT/cache (rebuilt by itself when a file changes)")),
    Flag("--output-dir", "output_dir", (*CUTTING_OUT, "fetch"), "running", type=folder,
         help="checkpoints, cache, the submission, and Kaggle's zip files extracted (default: output)"),
    Flag("--log-dir", "log_dir", TRAINING, "running", type=folder, help="TensorBoard logs (default: logs)"),
    Flag("--threshold", "threshold", CUTTING_OUT, "prediction", type=open_fraction, implies={"tune_threshold": False},
         help=("probability above which a pixel is the car (default: chosen on the validation cars after training "
               "and saved with the checkpoint; 0.5 for a checkpoint without one)")),
    Flag("--mask-cleanup", "mask_cleanup", CUTTING_OUT, "prediction", choices=MASK_CLEANUPS, help=(
        "before up-sampling: keep only the largest car region (largest), fill holes enclosed by the car "
        "(fill), or both (default: none; every run prints each one's validation Dice)")),
    Flag("--tta", "tta", CUTTING_OUT, "prediction", negatable=True, help=(
        "average with the horizontally flipped image: one more pass of the model (default: the preset's)")),
)


def flags_of(command: str) -> tuple[Flag, ...]:
    """The table's flags that `command` takes, in the table's order."""
    return tuple(flag for flag in FLAGS if command in flag.commands)


def flag_of(field_name: str) -> str:
    """The flag that sets a Config field, as users type it (`lr` -> `--lr`, `epochs_cap` -> `--epochs`)."""
    for flag in FLAGS:
        if flag.field == field_name or field_name in flag.implies:
            return flag.name
    return "--" + field_name.replace("_", "-")


def given_settings(values: Mapping[str, Any], command: str) -> dict[str, Any]:
    """The Config fields the flags of `command` set explicitly in `values` (argparse's namespace as a dict):
    each given flag's field and the fields it implies; flags left out are absent, not defaults."""
    given: dict[str, Any] = {}
    for flag in flags_of(command):
        value = values.get(flag.field)
        if value is not None:
            given[flag.field] = value
            given.update(flag.implies)
    return given
