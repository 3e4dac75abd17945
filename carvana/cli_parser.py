"""The command line's grammar: the subcommands, their flags (the flag table `carvana.run.flags.FLAGS`, the
data source's and each subcommand's own) and their --help; `carvana.cli` runs what it parses."""
from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import NoReturn

from carvana.core.geometry import Size
from carvana.run.fields import positive_float, positive_int, size
from carvana.run.flags import GROUPS, TRAINING, flags_of

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

SUBCOMMANDS = ("run", "fetch", "train", "predict", "cutout", "runs", "validate", "score", "submit")


def unknown_command(word: str) -> str:
    close = difflib.get_close_matches(word, SUBCOMMANDS, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown command {word!r}{guess}; the commands are {', '.join(SUBCOMMANDS)} (none: run)"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (`main.py train: error: ...`), exit code 2.

    The usage block argparse prints first would bury the one line that says what is wrong;
    `--help` still prints it all. Subparsers are made of the same class.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


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
    _add_flags(run, "run")

    fetch = sub.add_parser("fetch", help="get the data", description=(
        "Get the Carvana data into the data dir: download it from Kaggle (per file, resumable), or "
        "write the built-in sample dataset. A second run with complete data does nothing."))
    _add_flags(fetch, "fetch")

    train = sub.add_parser("train", help="train and score on the validation cars", description=(
        "Get the data if needed, split it by car, train with TensorBoard logs and checkpoints, then "
        "score the best checkpoint on the validation cars at full resolution."))
    _add_flags(train, "train")

    predict = sub.add_parser("predict", help="predict the test set into a submission", description=(
        "Predict every test image listed in sample_submission.csv with a checkpoint (or the ensemble of "
        "several), stream the RLE rows into the submission file (written atomically), then validate it. "
        "The model and its "
        "settings come from the checkpoint; the folders, device and workers from the flags or their "
        "defaults, never from the checkpoint (which may come from another machine)."))
    models = predict.add_mutually_exclusive_group()
    models.add_argument("--checkpoint", type=Path, nargs="+", default=None, metavar="PATH", help=(
        "checkpoint, or a run's folder (its best.pt), to predict with (default: best.pt of the latest run); "
        "several: their ensemble, the mean of their probabilities (models of one input and output size), "
        "thresholded and cleaned up as the first one's unless --threshold / --mask-cleanup say otherwise"))
    models.add_argument("--ensemble", type=Path, default=None, metavar="RUN_DIR", help=(
        "predict with the ensemble of every best.pt one level below RUN_DIR: a fold run's folds "
        "(RUN_DIR/fold-1/best.pt, ...), or each run's under OUTPUT/models"))
    predict.add_argument("--submission", type=Path, default=None, help=(
        "submission path, gzip-compressed if it ends in .gz, plain if in .csv (default: OUTPUT/submit.csv.gz)"))
    _add_flags(predict, "predict")

    cutout = sub.add_parser("cutout", help="cut the car out of photos (mask + transparent PNG)", description=(
        "For each JPEG/PNG photo (of any size) given, or in each folder given, write NAME_mask.png (255 = "
        "car) and NAME_cutout.png (the photo with a transparent background) into --out. The model and "
        "its settings come from the checkpoint. A file that cannot be read is reported in one line and "
        "the others go on; the exit code is 1 when any was skipped."))
    cutout.add_argument("photos", type=Path, nargs="+", metavar="PHOTO_OR_DIR")
    cutout.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint, or a run's folder, to predict with (default: best.pt of the latest run)")
    cutout.add_argument("--out", type=Path, default=Path("output") / "cutouts",
                        help="folder for the masks and cutouts (default: output/cutouts)")
    _add_flags(cutout, "cutout")

    runs = sub.add_parser("runs", help="a table of the runs in the output dir, best first", description=(
        "List the runs under OUTPUT/models: status, preset, model, input size, epochs done, the best "
        "epoch's validation Dice, the full-resolution validation Dice and threshold of its best "
        "checkpoint, the time trained and the best checkpoint's path; sorted by Dice."))
    runs.add_argument("--output-dir", type=Path, default=None, help="where the runs are (default: output)")
    runs.add_argument("--csv", type=Path, default=None, metavar="PATH", help="also write the table as CSV to PATH")

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
    validate.add_argument("--output-dir", type=Path, default=None, help=_EXTRACTED_HELP)

    score = sub.add_parser("score", help="mean Dice of a submission against known masks", description=(
        "The competition metric: mean over the ids in the truth CSV (train_masks.csv format) of the "
        "per-image Dice at full resolution."))
    score.add_argument("file", type=Path)
    score.add_argument("--truth", type=Path, required=True, help="CSV with img,rle_mask (e.g. train_masks.csv)")
    score.add_argument("--image-size", type=size, default=Size(1918, 1280), help="WxH (default 1918x1280)")

    submit = sub.add_parser("submit", help="upload a submission to Kaggle", description=(
        "Validate, upload with the Kaggle API, then wait for Kaggle to score it and print the "
        "public/private score or Kaggle's error description."))
    submit.add_argument("file", type=Path)
    submit.add_argument("-m", "--message", required=True, help="submission description shown on Kaggle")
    submit.add_argument("--data-dir", type=Path, default=None,
                        help="data dir whose sample_submission.csv is used to validate first (found as validate does)")
    submit.add_argument("--no-validate", action="store_true", help="upload without validating first")
    submit.add_argument("--output-dir", type=Path, default=None, help=_EXTRACTED_HELP)
    submit.add_argument("--timeout", type=positive_float, default=600.0, help="seconds to wait for the score")
    return parser


_EXTRACTED_HELP = ("where a --data-dir of Kaggle's zip files was extracted, in OUTPUT/data "
                   "(default: output)")


def _add_flags(p: argparse.ArgumentParser, command: str) -> None:
    """The flags of `command` by --help section: the data source's, then the table's
    (`carvana.run.flags.FLAGS`), and `--resume` for the commands that train."""
    groups: dict[str, argparse._ArgumentGroup] = {}

    def group(key: str) -> argparse._ArgumentGroup:
        if key not in groups:
            groups[key] = p.add_argument_group(GROUPS[key])
        return groups[key]

    if command in (*TRAINING, "fetch"):
        _add_data_flags(group("data"))
    for flag in flags_of(command):
        group(flag.group).add_argument(flag.name, **flag.argparse_options())
    if command in TRAINING:
        group("training").add_argument("--resume", default=None, metavar="PATH", help=(
            "continue a run from its checkpoint (a last.pt or a run's folder, or 'last' for the latest run's)"))
        group("training").add_argument("--config", type=Path, default=None, metavar="FILE", help=(
            "start from the settings of a YAML file (a run's config.yaml, or your own with some of the "
            "settings), the flags given overriding it"))
        group("training").add_argument("--print-config", action="store_true", help=(
            "print the resolved settings as YAML (what a config.yaml would hold) and exit"))


def _add_data_flags(g: argparse._ArgumentGroup) -> None:
    """Where the data comes from (`DataOptions`): not settings of the run, so not in the flag table."""
    g.add_argument("--dataset", choices=("auto", "kaggle", "sample"), default=None, help=(
        "auto: the data dir's Carvana data if present, else download when Kaggle credentials are "
        "configured, else the built-in sample dataset (default); kaggle / sample: force one"))
    g.add_argument("--high-quality", action="store_true", help="download train_hq/test_hq instead of train/test")
    g.add_argument("--train-only", action="store_true", help="download the training files only (no test set)")
    g.add_argument("--sample-cars", type=positive_int, default=None, help="cars in the built-in sample's training set")
    g.add_argument("--sample-image-size", type=size, default=None,
                   help="WxH of the built-in sample's photos (default 1918x1280, like Kaggle's)")
