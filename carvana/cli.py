"""Command line: `python main.py [run]` does the whole job; subcommands run one stage each.

Every stage is a function in a module of `carvana.pipeline`; this module only parses flags into a `Config`
(the flags that set its fields are the one table `carvana.run.flags.FLAGS`), calls the stage and
turns the errors a user can act on into one line and an exit code.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, NoReturn, Sequence

from carvana.core import distributed
from carvana.core.errors import CarvanaError, os_error_line
from carvana.core.geometry import Size
from carvana.core.process_lifetime import Terminated, interrupt_exit_code, sigterm_as_interrupt
from carvana.run.config import Config, Environment, preset
from carvana.run.flags import GROUPS, TRAINING, flags_of, positive_float, positive_int, size
from carvana.run.flags import given_settings as flag_settings
from carvana.run.settings_file import read_settings_file, settings_yaml

log = logging.getLogger(__name__)

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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        parser.error(_unknown_command(argv[0]))
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        argv.insert(0, "run")
    args = parser.parse_args(argv)
    if args.command not in DISTRIBUTED_COMMANDS and not distributed.is_main():
        return 0  # under torchrun, fetch/validate/score/submit run once: in rank 0
    try:
        with sigterm_as_interrupt():  # docker stop, Slurm, `timeout`: clean up as for Ctrl-C
            with _process_group(args):
                return args.handler(args)
    except CarvanaError as e:
        from carvana.pipeline.results import PredictionStopped, TrainingInterrupted

        # Under torchrun every process gets the signal: one says what happened.
        if distributed.is_main() or not isinstance(e, (TrainingInterrupted, PredictionStopped)):
            log.error(f"error: {e}")
        return e.exit_code  # 130 (Ctrl-C) or 143 (SIGTERM) during training, after last.pt was saved
    except OSError as e:  # what no stage foresaw (a disk that fills, a folder made read-only mid-run)
        log.error(f"error: {os_error_line(e)}")
        return 1
    except KeyboardInterrupt as e:
        if distributed.is_main():  # under torchrun every process gets the signal: one says so
            log.error("\ninterrupted" if not isinstance(e, Terminated) else str(e))
        return interrupt_exit_code(e)


def _unknown_command(word: str) -> str:
    close = difflib.get_close_matches(word, SUBCOMMANDS, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown command {word!r}{guess}; the commands are {', '.join(SUBCOMMANDS)} (none: run)"


# The subcommands that run as several processes under torchrun; rank 0 alone runs the others.
DISTRIBUTED_COMMANDS = ("run", "train", "predict")


@contextlib.contextmanager
def _process_group(args: argparse.Namespace) -> Iterator[None]:
    """Under torchrun, join the processes of the run for the command (gloo on the CPU, nccl on CUDA)."""
    if args.command not in DISTRIBUTED_COMMANDS or not distributed.current().distributed:
        yield
        return
    from carvana.core.device import select_device

    distributed.start(select_device(getattr(args, "device", None) or Config.device).type)
    try:
        yield
    except Exception as error:  # noqa: BLE001 - only a lost process is turned into a line; others go on up
        if distributed.is_lost_process(error):
            raise CarvanaError(distributed.lost_process_message(error)) from None
        raise
    finally:
        distributed.stop()


# --------------------------------------------------------------------------- parser


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
    run.set_defaults(handler=_run)

    fetch = sub.add_parser("fetch", help="get the data", description=(
        "Get the Carvana data into the data dir: download it from Kaggle (per file, resumable), or "
        "write the built-in sample dataset. A second run with complete data does nothing."))
    _add_flags(fetch, "fetch")
    fetch.set_defaults(handler=_fetch)

    train = sub.add_parser("train", help="train and score on the validation cars", description=(
        "Get the data if needed, split it by car, train with TensorBoard logs and checkpoints, then "
        "score the best checkpoint on the validation cars at full resolution."))
    _add_flags(train, "train")
    train.set_defaults(handler=_train)

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
    predict.set_defaults(handler=_predict)

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
    cutout.set_defaults(handler=_cutout)

    runs = sub.add_parser("runs", help="a table of the runs in the output dir, best first", description=(
        "List the runs under OUTPUT/models: status, preset, model, input size, epochs done, the best "
        "epoch's validation Dice, the full-resolution validation Dice and threshold of its best "
        "checkpoint, the time trained and the best checkpoint's path; sorted by Dice."))
    runs.add_argument("--output-dir", type=Path, default=None, help="where the runs are (default: output)")
    runs.add_argument("--csv", type=Path, default=None, metavar="PATH", help="also write the table as CSV to PATH")
    runs.set_defaults(handler=_runs)

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
    submit.add_argument("--output-dir", type=Path, default=None, help=_EXTRACTED_HELP)
    submit.add_argument("--timeout", type=positive_float, default=600.0, help="seconds to wait for the score")
    submit.set_defaults(handler=_submit)
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


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The Config fields the command line set explicitly: a --config file's settings, then the flags
    given on top (flags left out are absent, not defaults)."""
    config_file = getattr(args, "config", None)
    if config_file is not None and getattr(args, "resume", None):
        raise CarvanaError("--config with --resume: a resumed run keeps its own settings; change single "
                           "ones with their flags")
    given = read_settings_file(config_file) if config_file is not None else {}
    given.update(flag_settings(vars(args), args.command))
    if "epochs" not in given and ("max_steps" in given or "max_time" in given) and not getattr(args, "resume", None):
        # A new run with a budget and no --epochs: the preset's epoch count does not cut it short.
        # A resumed run keeps whether its epochs cap it, as it keeps its other settings.
        given["epochs_cap"] = False
    return given


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """The preset (or `base`) with every setting given (a --config file's, the flags) applied on top."""
    changes = given_settings(args)
    if base is None:
        base = preset(changes.get("preset") or _default_preset_name(changes.get("device")))
    changes.pop("preset", None)
    if changes.get("model") and changes["model"] != base.model:
        # A different model than the preset's: take that model's own preset size and coarse phase as well.
        for name in ("input_size", "coarse_epochs"):
            if changes.get(name) is None:
                changes[name] = getattr(preset(changes["model"]), name)
    return base.replace(**changes)


def _default_preset_name(device: str | None = None) -> str:
    """unet1024 where the run gets a GPU (CUDA here, and no `--device cpu`), else cpu."""
    import torch

    on_cpu = device is not None and device.split(":")[0] == "cpu"
    return "unet1024" if torch.cuda.is_available() and not on_cpu else "cpu"


# --------------------------------------------------------------------------- handlers


def _run(args: argparse.Namespace) -> int:
    from carvana.pipeline.run_all import run_all

    config = config_from_args(args)
    if args.print_config:
        return _print_config(config)
    run_all(config, _data_options(args), args.resume, changes=given_settings(args))
    return 0


def _print_config(config: Config) -> int:
    log.info(settings_yaml(config, "settings resolved from the preset, --config and the flags "
                                   "(a new run fits the input size to its photos' shape unless input_size is set)")
             .rstrip("\n"))
    return 0


def _train(args: argparse.Namespace) -> int:
    from carvana.pipeline.report import tensorboard_command
    from carvana.pipeline.train import run_training

    config = config_from_args(args)
    if args.print_config:
        return _print_config(config)
    result = run_training(config, _data_options(args), args.resume, changes=given_settings(args))
    if result.fold_checkpoints:
        folder = result.fold_checkpoints[0].parent.parent
        log.info("\n".join([
            f"Fold checkpoints: {', '.join(str(path) for path in result.fold_checkpoints)}",
            f"Predict the test set with every fold:  python main.py predict --ensemble {folder}",
            f"TensorBoard:           {tensorboard_command(result.config.log_dir)}",
        ]))
        return 0
    log.info("\n".join([
        f"Best checkpoint: {result.checkpoint.path}",
        f"Predict the test set:  python main.py predict --checkpoint {result.checkpoint.path}",
        f"TensorBoard:           {tensorboard_command(result.config.log_dir)}",
    ]))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from carvana.data.source import get_data

    get_data(args.data_dir or Environment.data_dir, _data_options(args),
             output_dir=args.output_dir or Environment.output_dir, announce=True)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from carvana.pipeline.predict import run_prediction

    run_prediction(
        checkpoint=args.checkpoint,
        ensemble=args.ensemble,
        overrides=given_settings(args),
        submission=args.submission,
    )
    return 0


def _cutout(args: argparse.Namespace) -> int:
    from carvana.pipeline.cutout import run_cutout

    skipped = run_cutout(args.photos, args.out, args.checkpoint, overrides=given_settings(args))
    return 1 if skipped else 0


def _runs(args: argparse.Namespace) -> int:
    from carvana.runs_table import format_table, list_runs, write_csv

    output_dir = args.output_dir or Config.output_dir
    rows = list_runs(output_dir)
    if not rows:
        log.info(f"No runs in {output_dir / 'models'} yet: start one with  python main.py train")
    else:
        log.info(format_table(rows))
    if args.csv is not None:
        write_csv(rows, args.csv)
        log.info(f"CSV: {args.csv} ({len(rows)} run{'' if len(rows) == 1 else 's'})")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from carvana.pipeline.files import validate_file

    validate_file(args.file, args.sample_submission, image_size=args.image_size, data_dir=args.data_dir,
                  output_dir=args.output_dir)
    return 0


def _score(args: argparse.Namespace) -> int:
    from carvana.pipeline.files import score_file

    score_file(args.file, args.truth, args.image_size)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from carvana.pipeline.files import submit_file

    submit_file(args.file, args.message, data_dir=args.data_dir, validate=not args.no_validate,
                timeout=args.timeout, output_dir=args.output_dir)
    return 0


def _data_options(args: argparse.Namespace):
    from carvana.data.source import DataOptions

    return DataOptions(
        dataset=args.dataset or "auto",
        high_quality=args.high_quality,
        include_test=not args.train_only,
        sample_cars=args.sample_cars,
        sample_image_size=args.sample_image_size,
        data_dir_given="data_dir" in given_settings(args),
    )

