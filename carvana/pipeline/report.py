"""The words of the banners and summaries: what a run trains, how masks are made, where a submission went.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from carvana.core.text import count
from carvana.kaggle import files as layout_names
from carvana.models.input_sizes import coarse_input_size
from carvana.run.config import Config, model_choices
from carvana.run.identity import Run
from carvana.train.budget import TrainingBudget

log = logging.getLogger(__name__)


def tensorboard_command(log_dir: Path) -> str:
    """The command that shows a log dir's runs (relative dirs as ./logs, absolute ones as given)."""
    log_dir = Path(log_dir)
    return f"tensorboard --logdir {log_dir if log_dir.is_absolute() else f'./{log_dir}'}"


def describe_run(run: Run, config: Config, data, split, classifier, input_note: str = "") -> str:
    """The banner of a run about to train: its data, model, training settings and folders."""
    geometry = config.geometry
    cars = lambda names: len({layout_names.car_id(n) for n in names})  # noqa: E731
    params = sum(p.numel() for p in classifier.model.parameters())
    lr = float(classifier.optimizer.param_groups[0]["lr"])  # what the next epoch trains with
    base_lr = "" if math.isclose(lr, config.lr, rel_tol=1e-6) else f" (base {config.lr:g})"
    unfinished = not config.epochs_cap or classifier.epoch < config.epochs
    resumed = f" (from epoch {classifier.epoch + 1})" if 0 < classifier.epoch and unfinished else ""
    return "\n".join([
        f"Data: {count(len(split.train), 'training image')} ({count(cars(split.train), 'car')}), "
        f"{count(len(split.valid), 'validation image')} ({count(cars(split.valid), 'unseen car')}), "
        f"photos {data.image_size}",
        f"Model: {config.model} ({', '.join([f'width {config.width:g}', *model_choices(config.to_dict())])}, "
        f"{params / 1e6:.2f}M parameters), "
        f"input {geometry.input_size} -> output {geometry.output_size}{input_note or crop_note(config)}"
        f"{coarse_note(config)}",
        f"Training: {TrainingBudget.of(config).describe()}{resumed}, batch {config.batch_size}, "
        f"{config.optimizer} lr {lr:.3g}"
        f"{base_lr}, scheduler {config.scheduler}, device {classifier.device}, {classifier.forward.layout.describe()}",
        f"Run: {run.name}  (logs: {run.log_dir}, checkpoints: {run.models_dir})",
    ])


def coarse_note(config: Config) -> str:
    """The banner's words on the run's coarse phase (progressive resizing), or on why it has none."""
    if config.coarse_phase_epochs:
        return (f"; epochs 1-{config.coarse_phase_epochs} at "
                f"{coarse_input_size(config.model, config.input_size)} (coarse phase; --coarse-epochs 0 turns it off)")
    if config.coarse_epochs and config.crop is not None:
        return "; no coarse phase: --crop trains at full resolution"
    if config.coarse_epochs and not config.epochs_cap:
        return "; no coarse phase: a budget alone decides the run's length"
    if config.coarse_epochs:
        return f"; no coarse phase: --epochs {config.epochs} leaves no epoch after its {config.coarse_epochs}"
    return ""


def crop_note(config: Config) -> str:
    """The banner's words on a --crop run's sizes (none for other runs)."""
    if config.crop is None:
        return ""
    return f" (the {config.photo_size} photos whole, mirror-padded; training on {config.crop} crops of them)"


def prediction_words(config: Config, threshold_note: str) -> list[str]:
    """How the masks are made, for a banner: the threshold and where it comes from, the clean-up, TTA."""
    settings = [f"threshold {config.threshold:g}" + (f": {threshold_note}" if threshold_note else "")]
    if config.mask_cleanup != "none":
        settings.append(f"mask cleanup {config.mask_cleanup}")
    if config.tta:
        settings.append("flip TTA")
    return settings


def report_submission(submission: Path, rows: int) -> None:
    log.info(f"Submission: {submission} ({rows} rows, valid). "
             f"Upload with:  python main.py submit {submission} -m \"...\"")
