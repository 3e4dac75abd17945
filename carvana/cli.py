"""Command line: `python main.py [run]` does the whole job; subcommands run one stage each.

Every stage is a function in `carvana.pipeline`; this module only parses flags into a `Config`,
calls the stage and turns the errors a user can act on into one line and an exit code.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from carvana.core.durations import parse_duration
from carvana.core.errors import CarvanaError, ConfigError
from carvana.core.geometry import Size
from carvana.core.process_lifetime import Terminated, interrupt_exit_code, sigterm_as_interrupt
from carvana.models.specs import MODEL_NAMES
from carvana.run.config import (AMP_MODES, MASK_CLEANUPS, OPTIMIZERS, PRESETS, SCHEDULERS, SEED_LIMIT, Config, preset,
                            run_name_problem)


DESCRIPTION = """\
Carvana Image Masking Challenge, end to end.

With no subcommand, runs the whole pipeline: get the data (Kaggle, or the built-in sample dataset
when there are no credentials), split it by car, train a U-Net with TensorBoard logging and
checkpoints, score the best model on the validation cars at full resolution, predict the test set
into output/submit.csv.gz and validate that file.
"""

EPILOG = """\
Each subcommand has its own --help, e.g.  python main.py predict --help
Watch training:  tensorboard --logdir ./logs
"""

SUBCOMMANDS = ("run", "fetch", "train", "predict", "validate", "score", "submit")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_as_interrupt():  # docker stop, Slurm, `timeout`: clean up as for Ctrl-C
            return args.handler(args)
    except CarvanaError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code  # 130 (Ctrl-C) or 143 (SIGTERM) during training, after last.pt was saved
    except KeyboardInterrupt as e:
        print("\ninterrupted" if not isinstance(e, Terminated) else str(e), file=sys.stderr)
        return interrupt_exit_code(e)


# --------------------------------------------------------------------------- flag values


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (`main.py train: error: ...`), exit code 2.

    The usage block argparse prints first would bury the one line that says what is wrong;
    `--help` still prints it all. Subparsers are made of the same class.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _number(text: str, kind: Callable[[str], Any], what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int, "a whole number of at least 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "a whole number of at least 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 0")
    return value


def seed_int(text: str) -> int:
    what = f"a whole number in 0..{SEED_LIMIT - 1}"
    value = _number(text, int, what)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a finite number above 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number above 0")
    return value


def open_fraction(text: str) -> float:
    """A number strictly between 0 and 1 (a validation share, a probability threshold)."""
    value = _number(text, float, "a number between 0 and 1 (both excluded)")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1 (both excluded)")
    return value


def share(text: str) -> float:
    """A share of the data: above 0, at most 1."""
    value = _number(text, float, "a number above 0 and at most 1")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0 and at most 1")
    return value


def duration(text: str) -> float:
    """Seconds from `90s`, `10m`, `1.5h`, `1h30m` (a unit is required: see carvana.core.durations)."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} {e}") from None


def size(text: str) -> Size:
    try:
        return Size.parse(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: give WIDTHxHEIGHT in whole pixels above 0, e.g. 384x256, or one number"
        ) from None


def run_name(text: str) -> str:
    problem = run_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return text


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="main.py",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="the whole pipeline (the default)", description=DESCRIPTION,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_flags(run)
    _add_training_flags(run)
    _add_prediction_flags(run)
    run.set_defaults(handler=_run)

    fetch = sub.add_parser("fetch", help="get the data", description=(
        "Get the Carvana data into the data dir: download it from Kaggle (per file, resumable), or "
        "write the built-in sample dataset. A second run with complete data does nothing."))
    _add_data_flags(fetch)
    fetch.set_defaults(handler=_fetch)

    train = sub.add_parser("train", help="train and score on the validation cars", description=(
        "Get the data if needed, split it by car, train with TensorBoard logs and checkpoints, then "
        "score the best checkpoint on the validation cars at full resolution."))
    _add_data_flags(train)
    _add_training_flags(train)
    _add_prediction_flags(train)
    train.set_defaults(handler=_train)

    predict = sub.add_parser("predict", help="predict the test set into a submission", description=(
        "Predict every test image listed in sample_submission.csv with a checkpoint, stream the RLE "
        "rows into the submission file (written atomically), then validate it."))
    predict.add_argument("--checkpoint", type=Path, default=None,
                         help="checkpoint to predict with (default: best.pt of the latest run)")
    predict.add_argument("--data-dir", type=Path, default=None, help="data dir with test/ and sample_submission.csv")
    predict.add_argument("--output-dir", type=Path, default=None, help="where submit.csv.gz goes (default: output)")
    predict.add_argument("--submission", type=Path, default=None, help=(
        "submission path, gzip-compressed if it ends in .gz, plain if in .csv (default: OUTPUT/submit.csv.gz)"))
    predict.add_argument("--batch-size", type=positive_int, default=None)
    predict.add_argument("--workers", type=non_negative_int, default=None, help="data-loading worker processes")
    predict.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, ...")
    predict.add_argument("--amp", choices=AMP_MODES, default=None, help="mixed precision")
    _add_prediction_flags(predict)
    predict.set_defaults(handler=_predict)

    validate = sub.add_parser("validate", help="check a submission file", description=(
        "Check a submission the way Kaggle will: readable gzip/CSV, header img,rle_mask, every id of "
        "sample_submission.csv exactly once, well-formed RLE inside the image. Exit 1 if not."))
    validate.add_argument("file", type=Path)
    validate.add_argument("--sample-submission", type=Path, default=None,
                          help="the ids to expect (default: DATA_DIR/sample_submission.csv)")
    validate.add_argument("--data-dir", type=Path, default=None, help=(
        "the data the submission was made from (default: input, or its built-in sample input/sample "
        "when input has no sample_submission.csv, as predict does)"))
    validate.add_argument("--image-size", type=size, default=None,
                          help="WxH of the images (default: read from the data dir's test photos, else 1918x1280)")
    validate.set_defaults(handler=_validate)

    score = sub.add_parser("score", help="mean Dice of a submission against known masks", description=(
        "The competition metric: mean over the ids in the truth CSV (train_masks.csv format) of the "
        "per-image Dice at full resolution."))
    score.add_argument("file", type=Path)
    score.add_argument("--truth", type=Path, required=True, help="CSV with img,rle_mask (e.g. train_masks.csv)")
    score.add_argument("--image-size", type=size, default=Size(1918, 1280), help="WxH (default 1918x1280)")
    score.set_defaults(handler=_score)

    submit = sub.add_parser("submit", help="upload a submission to Kaggle", description=(
        "Validate, upload with the Kaggle API, then wait for Kaggle to score it and print the "
        "public/private score or Kaggle's error description."))
    submit.add_argument("file", type=Path)
    submit.add_argument("-m", "--message", required=True, help="submission description shown on Kaggle")
    submit.add_argument("--data-dir", type=Path, default=None,
                        help="data dir whose sample_submission.csv is used to validate first (found as validate does)")
    submit.add_argument("--no-validate", action="store_true", help="upload without validating first")
    submit.add_argument("--timeout", type=positive_float, default=600.0, help="seconds to wait for the score")
    submit.set_defaults(handler=_submit)
    return parser


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=("auto", "kaggle", "sample"), default=None, help=(
        "auto: the data dir's Carvana data if present, else download when Kaggle credentials are "
        "configured, else the built-in sample dataset (default); kaggle / sample: force one"))
    g.add_argument("--data-dir", type=Path, default=None, help="Kaggle layout data dir (default: input)")
    g.add_argument("--high-quality", action="store_true", help="download train_hq/test_hq instead of train/test")
    g.add_argument("--train-only", action="store_true", help="download the training files only (no test set)")
    g.add_argument("--sample-cars", type=positive_int, default=None, help="cars in the built-in sample's training set")
    g.add_argument("--sample-image-size", type=size, default=None,
                   help="WxH of the built-in sample's photos (default 1918x1280, like Kaggle's)")


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (flags override the preset)")
    g.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="unet_original, unet1024, or cpu (default: unet1024 with CUDA, cpu without)")
    g.add_argument("--model", choices=MODEL_NAMES, default=None)
    g.add_argument("--input-size", type=size, default=None, help=(
        "model input WxH, e.g. 572 or 384x256 (default: the preset's pixel count at the photos' shape; "
        "the preset's own size for 1918x1280 photos)"))
    g.add_argument("--width", type=positive_float, default=None, help="channel multiplier (1 = the paper's widths)")
    g.add_argument("--epochs", type=positive_int, default=None, help=(
        "epochs to train (default: the preset's; with --max-steps or --max-time and no --epochs, the budget "
        "alone decides)"))
    g.add_argument("--coarse-epochs", type=non_negative_int, default=None, metavar="N", help=(
        "train the first N epochs at half the input size (4x faster steps), the rest at the input size "
        "(progressive resizing; default: the preset's, 0 = off; skipped when --epochs leaves no epoch after them)"))
    g.add_argument("--max-steps", type=positive_int, default=None, metavar="N",
                   help="stop after N optimiser steps over the whole run, resumed parts included")
    g.add_argument("--max-time", type=duration, default=None, metavar="DURATION", help=(
        "stop training within this much training time over the whole run, resumed parts included "
        "(e.g. 90s, 10m, 1.5h, 9h, 1h30m); scoring and predicting come on top"))
    g.add_argument("--batch-size", type=positive_int, default=None)
    g.add_argument("--lr", type=positive_float, default=None, help="learning rate")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    g.add_argument("--scheduler", choices=SCHEDULERS, default=None)
    g.add_argument("--grad-clip", type=positive_float, default=None, help="max gradient norm")
    g.add_argument("--patience", type=positive_int, default=None, dest="early_stopping_patience",
                   help="stop after this many epochs without a better validation Dice")
    g.add_argument("--validation-size", type=open_fraction, default=None, help="fraction of cars held out (0.2)")
    g.add_argument("--sample-size", type=share, default=None, help="fraction of the cars to use (1.0)")
    g.add_argument("--no-augment", action="store_true", help="train without augmentation")
    g.add_argument("--soft-targets", action=argparse.BooleanOptionalAction, default=None, help=(
        "train on the car's share of each output pixel (0..1) instead of 0/1 masks: sharper edges once "
        "up-sampled (default: the preset's)"))
    g.add_argument("--no-cache", action="store_true", help=(
        "decode the photos every epoch instead of once into OUTPUT/cache (rebuilt by itself when a file changes)"))
    g.add_argument("--seed", type=seed_int, default=None)
    g.add_argument("--workers", type=non_negative_int, default=None, help="data-loading worker processes")
    g.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--amp", choices=AMP_MODES, default=None,
                   help="mixed precision: auto (bf16/fp16 on CUDA, bf16 on CPUs that have it), off, fp16, bf16")
    g.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory format")
    g.add_argument("--output-dir", type=Path, default=None, help="models and submission (default: output)")
    g.add_argument("--log-dir", type=Path, default=None, help="TensorBoard logs (default: logs)")
    g.add_argument("--run-name", type=run_name, default=None, help="name of the run's log and checkpoint folders")
    g.add_argument("--resume", default=None, metavar="PATH",
                   help="continue a run from its checkpoint (a last.pt, or 'last' for the latest run's)")


def _add_prediction_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prediction")
    g.add_argument("--threshold", type=open_fraction, default=None, help=(
        "probability above which a pixel is the car (default: chosen on the validation cars after training "
        "and saved with the checkpoint; 0.5 for a checkpoint without one)"))
    g.add_argument("--mask-cleanup", choices=MASK_CLEANUPS, default=None, help=(
        "before up-sampling: keep only the largest car region (largest), fill holes enclosed by the car "
        "(fill), or both (default: none; every run prints each one's validation Dice)"))
    g.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help=(
        "average with the horizontally flipped image: one more pass of the model (default: the preset's)"))


TRAINING_FIELDS = (
    "model", "input_size", "width", "epochs", "max_steps", "max_time", "batch_size", "lr", "optimizer", "scheduler",
    "grad_clip", "coarse_epochs",
    "early_stopping_patience", "validation_size", "sample_size", "seed", "workers", "device", "amp",
    "data_dir", "output_dir", "log_dir", "run_name", "threshold", "mask_cleanup", "tta", "soft_targets")


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The Config fields the command line set explicitly (flags left out are absent, not defaults)."""
    flags = vars(args)
    given = {name: flags[name] for name in TRAINING_FIELDS if flags.get(name) is not None}
    if flags.get("no_augment"):
        given["augment"] = False
    if flags.get("no_cache"):
        given["cache"] = False
    if flags.get("no_channels_last"):
        given["channels_last"] = False
    if "threshold" in given:
        given["tune_threshold"] = False  # a given threshold is used as it is, not searched for
    if "epochs" in given:
        given["epochs_cap"] = True
    elif ("max_steps" in given or "max_time" in given) and not flags.get("resume"):
        # A new run with a budget and no --epochs: the preset's epoch count does not cut it short.
        # A resumed run keeps whether its epochs cap it, as it keeps its other settings.
        given["epochs_cap"] = False
    if flags.get("preset") is not None:
        given["preset"] = flags["preset"]
    return given


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """The preset (or `base`) with every flag that was given applied on top."""
    if base is None:
        base = preset(args.preset or _default_preset_name())
    changes = given_settings(args)
    changes.pop("preset", None)
    if changes.get("model") and changes["model"] != base.model:
        # A different model than the preset's: take that model's own preset size and coarse phase as well.
        for name in ("input_size", "coarse_epochs"):
            if changes.get(name) is None:
                changes[name] = getattr(preset(changes["model"]), name)
    return base.replace(**changes)


def _default_preset_name() -> str:
    import torch

    return "unet1024" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- handlers


def _run(args: argparse.Namespace) -> int:
    from carvana import pipeline

    pipeline.run_all(config_from_args(args), _data_options(args), args.resume, changes=given_settings(args))
    return 0


def _train(args: argparse.Namespace) -> int:
    from carvana import pipeline

    result = pipeline.run_training(config_from_args(args), _data_options(args), args.resume,
                                   changes=given_settings(args))
    pipeline.say("\n".join([
        f"Best checkpoint: {result.checkpoint}",
        f"Predict the test set:  python main.py predict --checkpoint {result.checkpoint}",
        f"TensorBoard:           {pipeline.tensorboard_command(result.config.log_dir)}",
    ]))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from carvana import pipeline

    data_dir = args.data_dir or Path("input")
    pipeline.get_data(data_dir, _data_options(args), announce=True)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from carvana import pipeline

    pipeline.run_prediction(
        checkpoint=args.checkpoint,
        overrides={k: getattr(args, k) for k in ("data_dir", "output_dir", "batch_size", "workers", "device",
                                                  "amp", "threshold", "mask_cleanup", "tta")},
        submission=args.submission,
    )
    return 0


def _validate(args: argparse.Namespace) -> int:
    from carvana import pipeline

    pipeline.validate_file(args.file, args.sample_submission, image_size=args.image_size, data_dir=args.data_dir)
    return 0


def _score(args: argparse.Namespace) -> int:
    from carvana import pipeline

    pipeline.score_file(args.file, args.truth, args.image_size)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from carvana import pipeline

    pipeline.submit_file(args.file, args.message, data_dir=args.data_dir, validate=not args.no_validate,
                         timeout=args.timeout)
    return 0


def _data_options(args: argparse.Namespace):
    from carvana.pipeline import DataOptions

    return DataOptions(
        dataset=args.dataset or "auto",
        high_quality=args.high_quality,
        include_test=not args.train_only,
        sample_cars=args.sample_cars,
        sample_image_size=args.sample_image_size,
    )

