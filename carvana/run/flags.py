"""The flags that set `Config` fields: one table of which flag sets which field, on which subcommands.

`FLAGS` is the one place that says which flag sets which field, on which subcommands and in which
--help section; each flag's type, choices and help are its field's (`carvana.run.fields.FIELDS`).
The parser (`carvana.cli`), the settings a command line gave (`given_settings`) and the flag named in
a message about a field (`flag_of`) are all read from it.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from carvana.run.fields import FIELDS

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
    """A command-line flag that sets a `Config` field: its type, choices and help are the field's
    (`FIELDS`), unless the flag gives its own help (a switch says what it switches)."""

    name: str  # as typed: "--lr"
    field: str  # the Config field it sets
    commands: tuple[str, ...]  # the subcommands that take it
    group: str  # its --help section: a key of GROUPS
    help: str | None = None  # None: its field's
    metavar: str | None = None
    switch: Any = None  # a flag that takes no value: the value it gives the field (--no-augment: False)
    negatable: bool = False  # --tta / --no-tta: on or off, unset keeps the preset's
    implies: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # other fields it sets as well

    def argparse_options(self) -> dict[str, Any]:
        """The keywords of `add_argument` for this flag: every flag stores its field, None when not given."""
        field = FIELDS[self.field]
        options: dict[str, Any] = {"dest": self.field, "default": None, "help": self.help or field.help}
        if self.switch is not None:
            options.update(action="store_const", const=self.switch)
        elif self.negatable:
            options.update(action=argparse.BooleanOptionalAction)
        else:
            options.update({key: value for key, value in (("type", field.parse), ("choices", field.choices),
                                                          ("metavar", self.metavar)) if value is not None})
        return options


FLAGS: tuple[Flag, ...] = (
    Flag("--data-dir", "data_dir", (*PREDICTING, "fetch"), "data"),
    Flag("--preset", "preset", TRAINING, "training"),
    Flag("--model", "model", TRAINING, "training"),
    Flag("--input-size", "input_size", TRAINING, "training"),
    Flag("--crop", "crop", TRAINING, "training", metavar="WxH"),
    Flag("--width", "width", TRAINING, "training"),
    Flag("--upsample", "upsample", TRAINING, "training"),
    Flag("--attention", "attention", TRAINING, "training", negatable=True),
    Flag("--encoder-weights", "encoder_weights", TRAINING, "training", metavar="imagenet|none|PATH"),
    Flag("--encoder-lr-scale", "encoder_lr_scale", TRAINING, "training", metavar="SHARE"),
    Flag("--encoder-freeze-epochs", "encoder_freeze_epochs", TRAINING, "training", metavar="N"),
    Flag("--epochs", "epochs", TRAINING, "training", implies={"epochs_cap": True}),
    Flag("--coarse-epochs", "coarse_epochs", TRAINING, "training", metavar="N"),
    Flag("--max-steps", "max_steps", TRAINING, "training", metavar="N"),
    Flag("--max-time", "max_time", TRAINING, "training", metavar="DURATION"),
    Flag("--batch-size", "batch_size", PREDICTING, "running"),
    Flag("--lr", "lr", TRAINING, "training"),
    Flag("--optimizer", "optimizer", TRAINING, "training"),
    Flag("--scheduler", "scheduler", TRAINING, "training"),
    Flag("--grad-clip", "grad_clip", TRAINING, "training"),
    Flag("--patience", "early_stopping_patience", TRAINING, "training"),
    Flag("--validation-size", "validation_size", TRAINING, "training"),
    Flag("--sample-size", "sample_size", TRAINING, "training"),
    Flag("--folds", "folds", TRAINING, "training", metavar="K"),
    Flag("--no-augment", "augment", TRAINING, "training", switch=False, help="train without augmentation"),
    Flag("--soft-targets", "soft_targets", TRAINING, "training", negatable=True),
    Flag("--seed", "seed", TRAINING, "training"),
    Flag("--amp", "amp", CUTTING_OUT, "running"),
    Flag("--memory-format", "memory_format", CUTTING_OUT, "running"),
    Flag("--channels-last", "memory_format", CUTTING_OUT, "running", switch="channels_last",
         help="force channels_last (NHWC) memory format: --memory-format channels_last"),
    Flag("--no-channels-last", "memory_format", CUTTING_OUT, "running", switch="nchw",
         help="force NCHW memory format: --memory-format nchw"),
    Flag("--run-name", "run_name", TRAINING, "training"),
    Flag("--workers", "workers", PREDICTING, "running"),
    Flag("--device", "device", CUTTING_OUT, "running"),
    Flag("--sync-bn", "sync_bn", TRAINING, "running", switch=True, help=(
        "under torchrun on GPUs: batch norm statistics over all the processes' batches (SyncBatchNorm)")),
    Flag("--no-cache", "cache", TRAINING, "running", switch=False, help=(
        "decode the photos every epoch instead of once into OUTPUT/cache (rebuilt by itself when a file changes)")),
    Flag("--output-dir", "output_dir", (*CUTTING_OUT, "fetch"), "running"),
    Flag("--log-dir", "log_dir", TRAINING, "running"),
    Flag("--threshold", "threshold", CUTTING_OUT, "prediction", implies={"tune_threshold": False}),
    Flag("--mask-cleanup", "mask_cleanup", CUTTING_OUT, "prediction"),
    Flag("--tta", "tta", CUTTING_OUT, "prediction", negatable=True),
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
