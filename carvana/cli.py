"""Command line: `python main.py [run]` does the whole job; subcommands run one stage each.

Every stage is a function in a module of `carvana.pipeline`; this module parses the command line
(`carvana.cli_parser`), hands the flags to the stage (its settings are decided by `carvana.pipeline.settings`)
and turns the errors a user can act on into one line and an exit code.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Any, Iterator, Sequence

from carvana.cli_parser import SUBCOMMANDS, build_parser, unknown_command
from carvana.core import ranks
from carvana.core.errors import CarvanaError, StoppedBySignal, os_error_line
from carvana.core.process_lifetime import Terminated, interrupt_exit_code, sigterm_as_interrupt
from carvana.run.config import Config, Environment
from carvana.run.settings_file import settings_yaml

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        parser.error(unknown_command(argv[0]))
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        argv.insert(0, "run")
    args = parser.parse_args(argv)
    if args.command not in DISTRIBUTED_COMMANDS and not ranks.is_main():
        return 0  # under torchrun, fetch/validate/score/submit run once: in rank 0
    try:
        with sigterm_as_interrupt():  # docker stop, Slurm, `timeout`: clean up as for Ctrl-C
            with _process_group(args):
                return HANDLERS[args.command](args)
    except CarvanaError as e:
        # Under torchrun every process gets the signal: one says what happened.
        if ranks.is_main() or not isinstance(e, StoppedBySignal):
            log.error(f"error: {e}")
        return e.exit_code  # 130 (Ctrl-C) or 143 (SIGTERM) during training, after last.pt was saved
    except OSError as e:  # what no stage foresaw (a disk that fills, a folder made read-only mid-run)
        log.error(f"error: {os_error_line(e)}")
        return 1
    except KeyboardInterrupt as e:
        if ranks.is_main():  # under torchrun every process gets the signal: one says so
            log.error("\ninterrupted" if not isinstance(e, Terminated) else str(e))
        return interrupt_exit_code(e)


# The subcommands that run as several processes under torchrun; rank 0 alone runs the others.
DISTRIBUTED_COMMANDS = ("run", "train", "predict")


@contextlib.contextmanager
def _process_group(args: argparse.Namespace) -> Iterator[None]:
    """Under torchrun, join the processes of the run for the command (gloo on the CPU, nccl on CUDA)."""
    if args.command not in DISTRIBUTED_COMMANDS or not ranks.current().distributed:
        yield
        return
    from carvana.core import distributed
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


# --------------------------------------------------------------------------- handlers


def _run(args: argparse.Namespace) -> int:
    from carvana.pipeline.run_all import run_all

    given, config = _settings(args)
    if args.print_config:
        return _print_config(given, config, args.resume)
    run_all(config, _data_options(args, given), args.resume, given=given)
    return 0


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gave: a --config file's, then the flags (`given_settings`)."""
    from carvana.pipeline.settings import given_settings

    return given_settings(vars(args), args.command)


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], Config]:
    """The settings the command line gave, and the run's settings they request (`requested_settings`; with
    --resume only where to look for the run: its checkpoint holds the rest)."""
    from carvana.pipeline.settings import requested_settings

    given = _given(args)
    return given, requested_settings(given, resuming=args.resume is not None)


def _print_config(given: dict[str, Any], config: Config, resume: str | None) -> int:
    """--print-config: a new run's settings, or those a resumed run goes on with (`resumed_run_settings`)."""
    from carvana.pipeline.settings import resumed_run_settings

    if resume is not None:
        config = resumed_run_settings(given, config, resume)
        title = f"settings of the run --resume {resume} goes on with"
    else:
        title = ("settings resolved from the preset, --config and the flags (a new run fits the input size to its "
                 "photos' shape unless input_size is set)")
    log.info(settings_yaml(config, title).rstrip("\n"))
    return 0


def _train(args: argparse.Namespace) -> int:
    from carvana.pipeline.report import tensorboard_command
    from carvana.pipeline.train import run_training

    given, config = _settings(args)
    if args.print_config:
        return _print_config(given, config, args.resume)
    result = run_training(config, _data_options(args, given), args.resume, given=given)
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

    get_data(args.data_dir or Environment.data_dir, _data_options(args, _given(args)),
             output_dir=args.output_dir or Environment.output_dir, announce=True)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from carvana.pipeline.predict import run_prediction

    run_prediction(
        checkpoint=args.checkpoint,
        ensemble=args.ensemble,
        overrides=_given(args),
        submission=args.submission,
    )
    return 0


def _cutout(args: argparse.Namespace) -> int:
    from carvana.pipeline.cutout import run_cutout

    skipped = run_cutout(args.photos, args.out, args.checkpoint, overrides=_given(args))
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


def _data_options(args: argparse.Namespace, given: dict[str, Any]):
    from carvana.data.source import DataOptions

    return DataOptions(
        dataset=args.dataset or "auto",
        high_quality=args.high_quality,
        include_test=not args.train_only,
        sample_cars=args.sample_cars,
        sample_image_size=args.sample_image_size,
        data_dir_given="data_dir" in given,
    )


HANDLERS = {"run": _run, "fetch": _fetch, "train": _train, "predict": _predict, "cutout": _cutout, "runs": _runs,
            "validate": _validate, "score": _score, "submit": _submit}
