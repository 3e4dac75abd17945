"""The pipeline's stages as plain functions: get data -> split by car -> train -> score -> predict -> validate.

Each function is one step a user can run on its own (see `carvana.cli`); `run_all` chains them.
The functions print what they are doing and where things were written.
"""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from carvana.atomic import atomic_path
from carvana.config import Config
from carvana.data import kaggle_layout as layout_names
from carvana.errors import CarvanaError, CheckpointError, ConfigError, DataError
from carvana.geometry import Size, model_geometry

SUBMISSION_NAME = "submit.csv.gz"


class TrainingInterrupted(CarvanaError):
    """Ctrl-C during training: the last checkpoint is saved; the message says how to resume."""

    exit_code = 130


@dataclass(frozen=True)
class DataOptions:
    """Where the data comes from (the `--dataset` family of flags)."""

    dataset: str = "auto"  # auto | kaggle | sample
    high_quality: bool = False
    include_test: bool = True
    sample_cars: int | None = None
    sample_image_size: Size | None = None


@dataclass(frozen=True)
class DataSource:
    data_dir: Path
    origin: str  # "local data", "Kaggle", "built-in sample"


@dataclass(frozen=True)
class TrainingResult:
    config: Config  # the run's settings (a resumed run's model and name included)
    classifier: Any  # the CarvanaClassifier, holding the weights of `checkpoint`
    checkpoint: Path  # best.pt, or last.pt when no epoch improved on the monitored metric
    data_dir: Path  # where the data came from (e.g. input/sample for the built-in sample)
    validation_dice: float  # at full resolution, on the validation cars
    validation_images: int
    validation_cars: int


def say(message: str) -> None:
    print(message, flush=True)


def tensorboard_command(log_dir: Path) -> str:
    """The command that shows a log dir's runs (relative dirs as ./logs, absolute ones as given)."""
    log_dir = Path(log_dir)
    return f"tensorboard --logdir {log_dir if log_dir.is_absolute() else f'./{log_dir}'}"


# --------------------------------------------------------------------------- data


def sample_data_dir(data_dir: Path) -> Path:
    """The built-in sample lives beside real data, never mixed into it."""
    return data_dir / "sample"


def get_data(data_dir: Path, options: DataOptions, announce: bool = True) -> DataSource:
    """Find, download or generate the data, following `--dataset`."""
    from carvana.data.layout import is_carvana_data_dir
    from carvana.fetch.kaggle_api import kaggle_credentials_configured

    data_dir = Path(data_dir)
    choice = options.dataset
    if choice == "auto":
        if is_carvana_data_dir(data_dir) and not _download_in_progress(data_dir):
            source = DataSource(data_dir, "local data")
        elif kaggle_credentials_configured():
            choice = "kaggle"
        elif _has_part_of_the_layout(data_dir) and not _download_in_progress(data_dir):
            # Some of the Kaggle files are here but not all, and none can be downloaded: name the missing
            # one rather than quietly train on the sample (and replace a submission made from real data).
            from carvana.data.layout import load_carvana_data

            load_carvana_data(data_dir, need_test=False)
            source = DataSource(data_dir, "local data")
        else:
            choice = "sample"
            if announce and _download_in_progress(data_dir):
                say(f"{data_dir} holds an unfinished Kaggle download (no {layout_names.COMPLETE_MARKER}) and there "
                    "are no Kaggle credentials to finish it: using the built-in sample dataset.")
            elif announce:
                say("No Carvana data in {} and no Kaggle credentials: using the built-in sample dataset.\n"
                    "  (For the real data: put kaggle.json in ~/.kaggle/ or set KAGGLE_USERNAME/KAGGLE_KEY; "
                    "see README, 'Kaggle credentials'.)".format(data_dir))
    if choice == "kaggle":
        from carvana.fetch.kaggle_fetcher import fetch_kaggle

        if announce:
            say(f"Downloading Carvana from Kaggle into {data_dir} (resumable; complete files are skipped) ...")
        report = fetch_kaggle(data_dir, high_quality=options.high_quality, include_test=options.include_test)
        if announce:
            say(f"  {report.summary()}")
        source = DataSource(data_dir, "Kaggle")
    elif choice == "sample":
        source = DataSource(_ensure_sample(sample_data_dir(data_dir), options, announce), "built-in sample")
    if announce:
        say(f"Dataset: {source.origin} in {source.data_dir}")
    return source


def _has_part_of_the_layout(data_dir: Path) -> bool:
    parts = (layout_names.TRAIN_DIR, layout_names.TRAIN_HQ_DIR, layout_names.MASKS_DIR, layout_names.MASKS_CSV,
             layout_names.TEST_DIR, layout_names.TEST_HQ_DIR, layout_names.SAMPLE_SUBMISSION_CSV)
    return any((data_dir / part).exists() for part in parts)


def _download_in_progress(data_dir: Path) -> bool:
    """A Kaggle fetch started here and has not written the completion marker: never trust it as data."""
    from carvana.fetch.kaggle_fetcher import DONE_DIR, DOWNLOAD_DIR

    started = (data_dir / DOWNLOAD_DIR).exists() or (data_dir / DONE_DIR).exists()
    return started and layout_names.read_complete_marker(data_dir) is None


def _ensure_sample(sample_dir: Path, options: DataOptions, announce: bool) -> Path:
    from carvana.fetch.sample_dataset import generate_sample_dataset

    marker = layout_names.read_complete_marker(sample_dir)
    wanted: dict[str, Any] = {}
    if options.sample_cars is not None:
        wanted["train_cars"] = options.sample_cars
    if options.sample_image_size is not None:
        wanted["size"] = options.sample_image_size
    if marker is not None and marker.get("source") == "sample" and _sample_matches(marker, wanted):
        return sample_dir
    if announce:
        say(f"Generating the built-in sample dataset in {sample_dir} ...")
    report = generate_sample_dataset(sample_dir, **wanted)
    if announce:
        say(f"  {report.summary()}")
    return sample_dir


def _sample_matches(marker: dict[str, Any], wanted: dict[str, Any]) -> bool:
    if "train_cars" in wanted and marker.get("train_cars") != wanted["train_cars"]:
        return False
    if "size" in wanted and list(marker.get("size", [])) != list(wanted["size"]):
        return False
    return True


# --------------------------------------------------------------------------- training


def run_training(config: Config, options: DataOptions, resume: str | None = None,
                 need_test: bool = False) -> TrainingResult:
    """Get data, split by car, train with callbacks, score the best checkpoint at full resolution.

    `need_test`: check the test set's layout too (its ids and photos' presence) before training, so
    that a run which ends by predicting it does not find a missing file only after training.
    """
    from carvana.data.datasets import make_train_loader, make_valid_loader
    from carvana.data.layout import load_carvana_data
    from carvana.data.split import split_by_car
    from carvana.train.checkpoint import BEST_NAME, LAST_NAME, ModelCheckpoint, load_checkpoint
    from carvana.train.classifier import CarvanaClassifier, TrainingInterruptedError
    from carvana.train.early_stopping import EarlyStopping
    from carvana.train.tensorboard import TensorBoardLogger, TensorBoardVisualizer

    checkpoint: dict[str, Any] | None = None
    if resume:
        resume_path = _resolve_resume(config, resume)
        checkpoint = load_checkpoint(resume_path)
        # The run continues with the checkpoint's model and run name; flags may change the rest.
        saved = Config.from_dict(checkpoint["config"])
        config = config.replace(model=saved.model, input_size=saved.input_size, width=saved.width,
                                run_name=saved.run_name)
    run_name = config.run_name or f"{config.model}-{datetime.now():%Y%m%d-%H%M%S}"
    config = config.replace(run_name=run_name)
    models_dir = config.output_dir / "models" / run_name
    # Fail now, not after the first epoch (or the download): outputs must be writable, and a new
    # run must not overwrite the checkpoints of an earlier run that had the same name.
    check_writable_dir(models_dir, "checkpoints")
    check_writable_dir(config.log_dir / run_name, "TensorBoard logs")
    if checkpoint is None and any((models_dir / name).exists() for name in (LAST_NAME, BEST_NAME)):
        raise ConfigError(f"{models_dir}: run {run_name} already has checkpoints; continue it with "
                          f"--resume {models_dir / LAST_NAME}, or choose another --run-name")

    source = get_data(config.data_dir, options)
    data = load_carvana_data(source.data_dir, need_test=need_test)
    split = split_by_car(data.train_names, config.validation_size, config.sample_size, config.seed)
    geometry = model_geometry(config.model, config.input_size)

    classifier = CarvanaClassifier(config)
    if checkpoint is not None:
        classifier.resume_from(resume_path)
    say(_describe_run(config, data, split, classifier, geometry, source))

    checkpointer = ModelCheckpoint(models_dir, monitor="val_dice", mode="max")
    callbacks = [
        TensorBoardLogger(config.log_dir, run_name),
        TensorBoardVisualizer(config.log_dir, run_name),
        checkpointer,
    ]
    if config.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val_dice", patience=config.early_stopping_patience, mode="max"))

    train_loader = make_train_loader(data, split.train, geometry, config)
    valid_loader = make_valid_loader(data, split.valid, geometry, config)
    try:
        classifier.train(train_loader, valid_loader, epochs=config.epochs, callbacks=callbacks)
    except TrainingInterruptedError as e:
        raise TrainingInterrupted(e.resume_hint) from None

    best = models_dir / "best.pt"
    chosen = best if best.exists() else models_dir / "last.pt"
    classifier.load_weights(chosen)
    dice = score_validation(classifier, data, split.valid, config, run_name)
    return TrainingResult(config, classifier, chosen, source.data_dir, dice, len(split.valid),
                          len({layout_names.car_id(n) for n in split.valid}))


def check_writable_dir(folder: Path, what: str) -> None:
    """ConfigError unless `folder` exists or can be created, and files can be written in it.

    Checks the nearest existing part of the path, so nothing is created on disk yet.
    """
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{folder}: cannot write {what} here ({existing} is a file, not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{folder}: cannot write {what} here (no permission to write in {existing})")


def _resolve_resume(config: Config, resume: str) -> Path:
    if resume != "last":
        path = Path(resume)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint to resume from")
        return path
    candidates = sorted((config.output_dir / "models").glob("*/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(f"{config.output_dir / 'models'}: no run with a last.pt to resume")
    return candidates[-1]


def _describe_run(config, data, split, classifier, geometry, source) -> str:
    cars = lambda names: len({layout_names.car_id(n) for n in names})  # noqa: E731
    params = sum(p.numel() for p in classifier.model.parameters())
    return "\n".join([
        f"Data: {len(split.train)} training images ({cars(split.train)} cars), "
        f"{len(split.valid)} validation images ({cars(split.valid)} unseen cars), "
        f"photos {data.image_size}",
        f"Model: {config.model} (width {config.width:g}, {params / 1e6:.2f}M parameters), "
        f"input {geometry.input_size} -> output {geometry.output_size}",
        f"Training: {config.epochs} epochs, batch {config.batch_size}, {config.optimizer} lr {config.lr:g}, "
        f"scheduler {config.scheduler}, device {classifier.device}, precision {classifier.precision_name}",
        f"Run: {config.run_name}  (logs: {config.log_dir / config.run_name}, "
        f"checkpoints: {config.output_dir / 'models' / config.run_name})",
    ])


def score_validation(classifier, data, valid_names: list[str], config: Config, run_name: str) -> float:
    """Predict the validation cars through the submission path at full resolution and score them.

    This is the number Kaggle would compute: masks up-sampled to the photos' size, thresholded,
    run-length encoded, then compared with the true masks of cars the model never saw.
    """
    from carvana.data.datasets import make_test_loader
    from carvana.predict.predictions_saver import PredictionsSaver
    from carvana.predict.score import score_submission

    out_dir = config.output_dir / "validation" / run_name
    truth = out_dir / "valid_truth.csv"
    predictions = out_dir / "valid_predictions.csv.gz"
    _write_truth_csv(data, valid_names, truth)
    geometry = model_geometry(config.model, config.input_size)
    loader = make_test_loader([data.train_dir / n for n in valid_names], geometry, config,
                              raw_pixels=classifier.device.type == "cuda")
    say(f"Scoring the best checkpoint on {len(valid_names)} validation images at {data.image_size} ...")
    classifier.predict(loader, callbacks=[PredictionsSaver(predictions, data.image_size, threshold=config.threshold)],
                       tta=config.tta)
    report = score_submission(predictions, truth, data.image_size)
    say(f"  validation Dice at {data.image_size}: {report.mean_dice:.4f} ({report.n_images} images)")
    return report.mean_dice


def _write_truth_csv(data, names: list[str], path: Path) -> None:
    """The true masks of `names` as a train_masks.csv-style file (from the CSV, else from the GIFs)."""
    from carvana import rle
    from carvana.data.images import read_mask

    known = data.train_rle if data.train_rle is not None else {}
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(layout_names.SUBMISSION_HEADER)
        for name in names:
            text = known.get(name)
            if text is None:
                text = rle.encode(read_mask(data.mask_path(name)))
            writer.writerow([name, text])


# --------------------------------------------------------------------------- prediction


def predict_test_set(classifier, config: Config, data_dir: Path, submission: Path) -> int:
    """Stream the test set's predictions into `submission` (atomically); return the row count."""
    from carvana.data.datasets import make_test_loader
    from carvana.data.layout import load_carvana_data
    from carvana.predict.predictions_saver import PredictionsSaver

    data = load_carvana_data(data_dir, need_train=False)
    geometry = model_geometry(config.model, config.input_size)
    loader = make_test_loader(data, geometry, config, raw_pixels=classifier.device.type == "cuda")
    say(f"Predicting {len(data.test_names)} test images into {submission} "
        f"(threshold {config.threshold:g}{', flip TTA' if config.tta else ''}) ...")
    classifier.predict(loader, callbacks=[PredictionsSaver(submission, data.image_size, threshold=config.threshold)],
                       tta=config.tta)
    validate_file(submission, data.data_dir / layout_names.SAMPLE_SUBMISSION_CSV, image_size=data.image_size)
    return len(data.test_names)


def run_prediction(checkpoint: Path | None, overrides: dict[str, Any], submission: Path | None = None) -> Path:
    """`predict`: load a checkpoint, predict the test set, validate the file."""
    from carvana.train.checkpoint import load_checkpoint
    from carvana.train.classifier import CarvanaClassifier

    output_dir = overrides.get("output_dir") or Path("output")
    checkpoint = checkpoint or _latest_best(output_dir)
    saved = load_checkpoint(checkpoint)
    config = Config.from_dict(saved["config"]).replace(**overrides)
    classifier = CarvanaClassifier(config)
    classifier.load_weights(checkpoint)
    data_dir = _prediction_data_dir(config.data_dir)
    submission = submission or config.output_dir / SUBMISSION_NAME
    rows = predict_test_set(classifier, config, data_dir, submission)
    say(f"Submission: {submission} ({rows} rows, valid). Upload with:  python main.py submit {submission} -m \"...\"")
    return submission


def _latest_best(output_dir: Path) -> Path:
    candidates = sorted((output_dir / "models").glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(f"{output_dir / 'models'}: no trained model yet; run `python main.py train` first "
                              "or pass --checkpoint")
    return candidates[-1]


def _prediction_data_dir(data_dir: Path) -> Path:
    """The data dir with a test set: the given one, else its built-in sample."""
    if (data_dir / layout_names.SAMPLE_SUBMISSION_CSV).exists():
        return data_dir
    sample = sample_data_dir(data_dir)
    if (sample / layout_names.SAMPLE_SUBMISSION_CSV).exists():
        return sample
    raise DataError(data_dir / layout_names.SAMPLE_SUBMISSION_CSV, "missing: no test set to predict "
                    "(run `python main.py fetch` first)")


def run_all(config: Config, options: DataOptions, resume: str | None = None) -> None:
    """`python main.py`: the whole job, ending with a summary of where everything was written."""
    start = time.monotonic()
    result = run_training(config, options, resume, need_test=True)
    config = result.config
    submission = config.output_dir / SUBMISSION_NAME
    rows = predict_test_set(result.classifier, config, result.data_dir, submission)
    minutes, seconds = divmod(int(time.monotonic() - start), 60)
    say("\n".join([
        "",
        f"Done in {minutes}m{seconds:02d}s.",
        f"  Submission:      {submission} ({rows} rows, valid)",
        f"  Validation Dice: {result.validation_dice:.4f} at full resolution on {result.validation_cars} unseen cars "
        f"({result.validation_images} images)",
        f"  Best checkpoint: {result.checkpoint}",
        f"  TensorBoard:     {tensorboard_command(config.log_dir)}",
        f"  Upload:          python main.py submit {submission} -m \"{config.run_name}\"",
    ]))


# --------------------------------------------------------------------------- validate / score / submit


def validate_file(path: Path, sample_submission: Path, image_size: Size | None = None,
                  data_dir: Path | None = None) -> None:
    from carvana.predict.validate import validate_submission

    if image_size is None:
        image_size = _image_size_of(data_dir) if data_dir is not None else Size(*layout_names.ORIGINAL_SIZE)
    report = validate_submission(Path(path), Path(sample_submission), image_size)
    say(f"{path}: valid ({report.rows} rows, every id of {sample_submission} exactly once, RLE inside {image_size})")


def _image_size_of(data_dir: Path) -> Size:
    """The photo size of a data dir's test images."""
    from carvana.data.layout import load_carvana_data

    return load_carvana_data(data_dir, need_train=False).image_size


def score_file(path: Path, truth: Path, image_size: Size) -> float:
    from carvana.predict.score import score_submission

    report = score_submission(Path(path), Path(truth), image_size)
    say(f"{path}: mean Dice {report.mean_dice:.5f} over {report.n_images} images of {truth}")
    return report.mean_dice


def submit_file(path: Path, message: str, data_dir: Path, validate: bool = True, timeout: float = 600.0) -> None:
    from carvana.predict.kaggle_submit import submit_to_kaggle

    sample = Path(data_dir) / layout_names.SAMPLE_SUBMISSION_CSV
    if validate:
        if not sample.exists():
            raise DataError(sample, "missing: needed to validate the submission first (or pass --no-validate)")
        validate_file(path, sample, data_dir=data_dir)
    say(f"Uploading {path} to Kaggle ({layout_names.COMPETITION}) ...")
    result = submit_to_kaggle(Path(path), message, timeout=timeout)
    say(result.describe())

