"""A run's settings, decided here and nowhere else, then frozen.

A new run's `Config` is its preset (`--preset`, else the machine's: unet1024 with CUDA, cpu without),
a `--config` file's settings on top, the flags given on top of those; a resumed run's is its checkpoint's,
with the flags given applied (each printed) or refused where they cannot apply to a run that has trained.
Its last facts come from its photos, known once the data is found: the input size fitted to their shape,
and a `--crop` run's photos padded whole into the net. Prediction takes a checkpoint's recipe, where it
runs now and the threshold it chose. The stages after these functions read the settings; none changes them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from carvana.core.durations import format_duration
from carvana.core.errors import CarvanaError, ConfigError
from carvana.core.geometry import Size
from carvana.kaggle import files as layout_names
from carvana.models.input_sizes import input_size_for_photos, padded_input_size
from carvana.pipeline.resumed_data import resume_checkpoint
from carvana.predict.threshold import prediction_threshold
from carvana.run.checkpoint import Checkpoint
from carvana.run.config import (DEFAULTS, ENVIRONMENT_FIELDS, MODEL_OPTION_FIELDS, PRESETS, Config, options_of,
                                preset)
from carvana.run.flags import flag_of
from carvana.run.flags import given_settings as flag_settings
from carvana.run.settings_file import read_settings_file

# What a resumed run cannot change, and why: (fields, the reason given after "FLAG VALUE: CHECKPOINT").
FIXED_ON_RESUME = (
    # Another network: the saved weights would not fit it.
    (("model", "input_size", "width", "upsample", "attention"),
     "was trained with {flag} {old}; its weights only fit that network (start a new run to change it)"),
    # A run starts from these weights once, then carries on from its checkpoint's.
    (("encoder_weights",),
     "started from {flag} {old}; its weights carry on from its checkpoint (start a new run to change it)"),
    # Another split: cars the run validated on would be trained on.
    (("validation_size", "sample_size", "seed", "folds", "fold"),
     "was split with {flag} {old}; another value would put validation cars into training (start a new run to "
     "change it)"),
    # Which epochs ran at which input size (and crop).
    (("coarse_epochs", "crop", "photo_size"),
     "was started with {flag} {old}; its epochs already ran at their input sizes (start a new run to change it)"),
    # Its name and the preset its settings came from.
    (("run_name", "preset"),
     "belongs to {name} {old}; a resumed run keeps it (give single flags to change settings)"),
)

def given_settings(values: Mapping[str, Any], command: str) -> dict[str, Any]:
    """The Config fields a command line set explicitly (`values`: its parsed flags): a --config file's
    settings, then the flags given on top (flags left out are absent, not defaults)."""
    config_file, resume = values.get("config"), values.get("resume")
    if config_file is not None and resume:
        raise CarvanaError("--config with --resume: a resumed run keeps its own settings; change single "
                           "ones with their flags")
    given = read_settings_file(config_file) if config_file is not None else {}
    given.update(flag_settings(values, command))
    if "epochs" not in given and ("max_steps" in given or "max_time" in given) and not resume:
        # A new run with a budget and no --epochs: the preset's epoch count does not cut it short.
        # A resumed run keeps whether its epochs cap it, as it keeps its other settings.
        given["epochs_cap"] = False
    return given


def requested_settings(given: Mapping[str, Any], base: Config | None = None, resuming: bool = False) -> Config:
    """The preset (or `base`) with the `given` settings applied; another model than the preset's brings
    that model's own preset's input size and coarse phase unless they are given too (a model without a
    preset of its own, as the encoder U-Nets, keeps the preset's); a model without an encoder drops the
    preset's encoder settings (`--preset unet_resnet34 --model unet1024`). `resuming`: only where the run is
    looked for and runs (the `Environment`'s fields) is applied; the recipe is the checkpoint's
    (`resumed_settings`)."""
    changes = {name: value for name, value in given.items() if not resuming or name in ENVIRONMENT_FIELDS}
    name = changes.pop("preset", None)
    if base is None:
        base = preset(name or default_preset_name(changes.get("device")))
    model_preset = PRESETS.get(changes.get("model"))
    if model_preset is not None and model_preset.model != base.model:
        for field in ("input_size", "coarse_epochs"):
            if changes.get(field) is None:
                changes[field] = getattr(model_preset, field)
    for field in set(MODEL_OPTION_FIELDS) - set(options_of(changes.get("model", base.model))) - set(changes):
        changes[field] = DEFAULTS[field]  # the preset's encoder settings, for a model given without an encoder
    return base.replace(**changes)


def default_preset_name(device: str | None = None) -> str:
    """unet1024 where the run gets a GPU (CUDA here, and no `--device cpu`), else cpu."""
    on_cpu = device is not None and device.split(":")[0] == "cpu"
    return "unet1024" if torch.cuda.is_available() and not on_cpu else "cpu"


def resumed_run_settings(given: Mapping[str, Any], where: Config, resume: str) -> Config:
    """The settings the run `resume` names (found under `where.output_dir`) goes on with, `given` applied."""
    checkpoint = resume_checkpoint(where.output_dir, resume)
    return resumed_settings(checkpoint.run_config(), given, checkpoint.path)[0]


def resumed_settings(saved: Config, given: Mapping[str, Any], checkpoint: Path) -> tuple[Config, list[str]]:
    """The saved run's settings with the `given` ones applied, and one line per change made.

    A change that cannot apply to a resumed run (its network, split, phases or name) is refused in one
    line naming the flag.
    """
    notes: list[str] = []
    applied: dict[str, Any] = {}
    for name, value in given.items():
        if value is None or getattr(saved, name) == value:
            continue  # not given, or given as it already was
        old = getattr(saved, name)
        _check_resumable(name, value, old, checkpoint)
        applied[name] = value
        notes.append(_change_note(name, value, old))
    return saved.replace(**applied), notes


def _check_resumable(name: str, value: Any, old: Any, checkpoint: Path) -> None:
    """A ConfigError naming the flag when `FIXED_ON_RESUME` says a resumed run cannot change `name`."""
    for fields, reason in FIXED_ON_RESUME:
        if name in fields:
            flag = flag_of(name)
            raise ConfigError(f"{flag} {_shown(value)}: {checkpoint} " + reason.format(
                flag=flag, old=_shown(old), name=name.replace("_", " ")))


def _change_note(name: str, value: Any, old: Any) -> str:
    flag = flag_of(name)
    if name == "max_time":
        return f"resume: {flag} {_duration(old)} -> {_duration(value)}"
    if isinstance(value, bool):
        return f"resume: {flag} ({name.replace('_', ' ')} {_shown(old)} -> {_shown(value)})"
    return f"resume: {flag} {_shown(old)} -> {_shown(value)}"


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _duration(seconds: float | None) -> str:
    return "none" if seconds is None else format_duration(seconds)


def settings_for_photos(config: Config, photos: Size, fit_input: bool) -> tuple[Config, str]:
    """`config` with the facts its photos decide, and the banner's note on them (empty when nothing changed).

    `fit_input` (a new run without --input-size): the input size for the photos' shape at the preset's
    pixel count (`input_size_for_photos`). A --crop run takes its photos whole: their size is recorded
    and, with `fit_input`, the input is the smallest the net takes that holds them.
    """
    if config.crop is not None and config.photo_size is None:
        input_size = padded_input_size(config.model, photos) if fit_input else config.input_size
        return config.replace(photo_size=photos, input_size=input_size), ""
    if not fit_input:
        return config, ""
    fitted = input_size_for_photos(config.model, config.input_size, photos,
                                   drawn_for=Size(*layout_names.ORIGINAL_SIZE))
    if fitted == config.input_size:
        return config, ""
    return config.replace(input_size=fitted), f" (from the {photos} photos' shape; --input-size overrides)"


def prediction_settings(saved: Checkpoint, given: Mapping[str, Any], recipe: Config | None = None
                        ) -> tuple[Config, str]:
    """The settings a checkpoint predicts with: its recipe (or `recipe`, a run's own settings), the `given`
    ones (where it runs, --tta, --threshold, ...) on top, and the threshold (--threshold, else the one the
    checkpoint chose on its validation cars, else the recipe's); and where the threshold comes from."""
    config = (recipe or saved.recipe).replace(**given)
    threshold, note = prediction_threshold(saved.payload, given.get("threshold"), config.threshold)
    return config.replace(threshold=threshold), note
