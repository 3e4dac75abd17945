"""One typed configuration for a run, with named presets.

A preset is a complete, tested set of choices (model, input size, optimiser, batch, epochs);
command-line flags override single fields of it (`carvana.run.flags`). `Config` is plain data in
two groups of fields: the recipe (what makes the weights: model, input size, optimiser, loss,
threshold, seed, ...) and the `Environment` (where it runs: folders, device, workers). Every
checkpoint keeps the two apart, as dicts of primitives, so that `--resume` continues the same run
where it ran and `predict` rebuilds the same model wherever it runs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carvana.core.errors import ConfigError
from carvana.core.geometry import Geometry, Size
from carvana.models.fastest_layout import MEMORY_FORMATS
from carvana.models.input_sizes import coarse_input_size
from carvana.models.specs import MODEL_SPECS, UNET1024, UNET_ORIGINAL, model_geometry, model_spec

OPTIMIZERS = ("sgd", "rmsprop", "adam")
SCHEDULERS = ("plateau", "cosine", "none")
AMP_MODES = ("auto", "off", "fp16", "bf16")
# What carvana.predict.cleanup may do to a predicted mask: keep its largest region, fill its holes, both.
MASK_CLEANUPS = ("none", "largest", "fill", "largest+fill")
SEED_LIMIT = 2**32  # numpy, scikit-learn and the per-epoch seeds take seeds in [0, 2**32)
RUN_NAME_MAX_LENGTH = 100
RUN_NAME_PUNCTUATION = "._-+=@"
PATH_FIELDS = ("data_dir", "output_dir", "log_dir")
SIZE_FIELDS = ("input_size", "crop", "photo_size")  # WxH sizes, [width, height] in a checkpoint
LEGACY_CHANNELS_LAST = "channels_last"  # the setting `memory_format` replaced (checkpoints, config.yaml)


@dataclass(frozen=True)
class Environment:
    """Where a run runs, apart from what it learns: its folders and the machine's resources.

    `--resume` continues in the environment its checkpoint was saved with, flags overriding;
    `predict` runs in its own (flags, else these defaults), so a checkpoint from another machine
    needs none of its paths. Its values get `Config`'s checks once they are part of one.
    """

    data_dir: Path = Path("input")
    output_dir: Path = Path("output")
    log_dir: Path = Path("logs")
    device: str = "auto"
    workers: int = 2
    # Decode and resize the training photos once into output/cache (carvana.data.cache).
    cache: bool = True
    # Under torchrun with CUDA: batch norm statistics over every GPU's batch (SyncBatchNorm).
    sync_bn: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Primitives only, so a checkpoint holding it loads with torch.load(weights_only=True)."""
        return {name: str(value) if isinstance(value, Path) else value
                for name, value in ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Environment":
        """The fields of `data` this version knows (others, from another version of the tool, are skipped)."""
        known = [f.name for f in dataclasses.fields(cls) if f.name in data]
        return cls(**{name: Path(data[name]) if name in PATH_FIELDS else data[name] for name in known})


# The Config fields that say where a run runs (`Environment`); the others are its recipe.
ENVIRONMENT_FIELDS = tuple(f.name for f in dataclasses.fields(Environment))


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
        shown = " ".join(repr(c) for c in bad)
        return f"contains {shown}; use only letters, digits and ._-+=@"
    return None


def memory_format_of(channels_last: Any) -> str:
    """The `memory_format` of a setting from before it existed, `channels_last: true/false`: false was
    --no-channels-last, which forced NCHW; true was the default, which `auto` is now."""
    if not isinstance(channels_last, bool):
        raise ConfigError(f"channels last {channels_last!r}: must be true or false")
    return "auto" if channels_last else "nchw"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Config:
    preset: str = "cpu"
    # Model
    model: str = UNET1024
    input_size: Size = Size(384, 256)
    width: float = 1.0  # channel multiplier; < 1 gives a slimmer net of the same shape
    # Full-resolution training (--crop WxH, same-size nets): the photos are not resized. Training takes
    # random `crop` windows of them; validation and prediction take each photo whole, mirror-padded from
    # `photo_size` (the training photos' size, set when the run starts) to `input_size` (e.g. 1918x1280
    # in 1920x1280), and crop the output back to the photo. Photos of another size are resized to `photo_size`.
    crop: Size | None = None
    photo_size: Size | None = None
    # Optimisation
    optimizer: str = "rmsprop"
    lr: float = 2e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "plateau"
    batch_size: int = 2
    epochs: int = 50
    # The training budget (see carvana.train.budget): optimiser steps and seconds of training over the
    # whole run, resumed parts included. `epochs_cap` False: a budget alone decides the run's length,
    # so a small dataset trains as long as the budget allows instead of stopping at the preset's epochs.
    max_steps: int | None = None
    max_time: float | None = None  # seconds
    epochs_cap: bool = True
    grad_clip: float | None = None  # max gradient norm; None = no clipping
    # Progressive resizing: the run's first `coarse_epochs` epochs train at half the input size
    # (carvana.models.input_sizes), four times faster a step; the rest at the input size, from a new
    # cosine cycle (carvana.train.classifier). Only when the run's epochs leave some after them (see
    # `coarse_phase_epochs`); 0 = every epoch at the input size.
    coarse_epochs: int = 0
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    amp: str = "auto"  # auto: fp16/bf16 autocast on CUDA, bf16 on CPUs that have it, else off
    # auto: the faster of NCHW and channels_last for this model on this machine, timed once and cached
    # (carvana.models.fastest_layout; with amp auto, fp32 or bf16 as well); channels_last / nchw force one.
    memory_format: str = "auto"
    early_stopping_patience: int | None = None
    # Data (its folders, like the device, workers and cache below, are the run's `Environment`)
    data_dir: Path = Environment.data_dir
    output_dir: Path = Environment.output_dir
    log_dir: Path = Environment.log_dir
    validation_size: float = 0.2
    # K-fold by car (--folds K): K models, each validated on its own 1/K of the cars; `fold` is the
    # one (1..K) a model of such a run is (validation_size is then not used).
    folds: int = 1
    fold: int | None = None
    sample_size: float = 1.0  # fraction of the cars to use
    augment: bool = True
    # Targets as the car's share of each output pixel (0..1) instead of 0/1 (carvana.data.datasets).
    soft_targets: bool = False
    cache: bool = Environment.cache
    seed: int = 42
    workers: int = Environment.workers
    device: str = Environment.device
    sync_bn: bool = Environment.sync_bn
    # Prediction
    threshold: float = 0.5
    # After training, choose the threshold on the validation cars (carvana.predict.threshold) and save
    # it with the checkpoint; False when --threshold is given: that value is used as it is.
    tune_threshold: bool = True
    mask_cleanup: str = "none"  # one of MASK_CLEANUPS, applied before up-sampling
    tta: bool = False  # horizontal-flip test-time augmentation
    run_name: str | None = None

    def __post_init__(self) -> None:
        spec = model_spec(self.model)  # a ConfigError listing the models for an unknown name
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler {self.scheduler!r}: choose from {', '.join(SCHEDULERS)}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp {self.amp!r}: choose from {', '.join(AMP_MODES)}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ConfigError(f"memory format {self.memory_format!r}: choose from {', '.join(MEMORY_FORMATS)}")
        if self.mask_cleanup not in MASK_CLEANUPS:
            raise ConfigError(f"mask cleanup {self.mask_cleanup!r}: choose from {', '.join(MASK_CLEANUPS)}")
        self._check_numbers()
        if self.run_name is not None:
            problem = run_name_problem(self.run_name) if isinstance(self.run_name, str) else "not a string"
            if problem:
                raise ConfigError(f"run name {self.run_name!r}: {problem}")
        spec.geometry(self.input_size)  # raises a ConfigError naming valid sizes
        if self.crop is not None or self.photo_size is not None:
            self._check_crop()
        elif self.coarse_epochs:
            coarse_input_size(self.model, self.input_size)  # a ConfigError for a net that cannot take it

    def _check_crop(self) -> None:
        """--crop: a same-size net, a crop it can take, and photos that fit into its input whole."""
        spec = model_spec(self.model)
        for name in ("crop", "photo_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, Size) or not all(_is_int(side) and side > 0
                                                                              for side in value)):
                raise ConfigError(f"{name.replace('_', ' ')} {value!r}: must be a WxH size in whole pixels above 0")
        if self.crop is None:
            raise ConfigError(f"photo size {self.photo_size}: only a run with --crop pads whole photos")
        if not spec.same_size:
            same_size = ", ".join(name for name, other in MODEL_SPECS.items() if other.same_size)
            raise ConfigError(f"--crop {self.crop}: {self.model} shrinks its input (valid convolutions), so a crop "
                              f"of the photo cannot give a mask of it; full-resolution training needs {same_size}")
        try:
            spec.geometry(self.crop)
        except ConfigError as error:
            raise ConfigError(f"--crop {self.crop}: {error}") from None
        if self.photo_size is None:
            return  # set when the run starts, from its photos
        fits = self.photo_size.width <= self.input_size.width and self.photo_size.height <= self.input_size.height
        if not fits:
            raise ConfigError(f"--input-size {self.input_size}: smaller than the {self.photo_size} photos, which "
                              "--crop takes whole (leave --input-size out: the photos padded to a size the net takes)")
        if self.crop.width > self.input_size.width or self.crop.height > self.input_size.height:
            raise ConfigError(f"--crop {self.crop}: larger than the {self.photo_size} photos padded to "
                              f"{self.input_size}; choose a crop within that")

    def _check_numbers(self) -> None:
        """Every number in range and finite: a config from a file or checkpoint gets the flags' checks."""
        for name in ("lr", "momentum", "weight_decay", "width", "bce_weight", "dice_weight", "validation_size",
                     "sample_size", "threshold"):
            if not _is_finite_number(getattr(self, name)):
                raise ConfigError(f"{name.replace('_', ' ')} {getattr(self, name)!r}: must be a finite number")
        if self.grad_clip is not None and not _is_finite_number(self.grad_clip):
            raise ConfigError(f"grad clip {self.grad_clip!r}: must be a finite number")
        for name in ("batch_size", "epochs", "seed", "workers", "coarse_epochs"):
            if not _is_int(getattr(self, name)):
                raise ConfigError(f"{name.replace('_', ' ')} {getattr(self, name)!r}: must be a whole number")
        if self.max_steps is not None and (not _is_int(self.max_steps) or self.max_steps < 1):
            raise ConfigError(f"max steps {self.max_steps!r}: must be a whole number of at least 1 (or unset)")
        if self.max_time is not None and (not _is_finite_number(self.max_time) or self.max_time <= 0):
            raise ConfigError(f"max time {self.max_time!r}: must be a finite number of seconds above 0 (or unset)")
        for name in ("epochs_cap", "soft_targets", "cache", "tune_threshold"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name.replace('_', ' ')} {getattr(self, name)!r}: must be true or false")
        if not self.epochs_cap and self.max_steps is None and self.max_time is None:
            raise ConfigError("epochs: without --max-steps or --max-time the run needs --epochs to end")
        if self.early_stopping_patience is not None and not _is_int(self.early_stopping_patience):
            raise ConfigError(f"patience {self.early_stopping_patience!r}: must be a whole number")
        if not 0.0 < self.validation_size < 1.0:
            raise ConfigError(f"validation size {self.validation_size}: must be between 0 and 1")
        if not 0.0 < self.sample_size <= 1.0:
            raise ConfigError(f"sample size {self.sample_size}: must be in (0, 1]")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold {self.threshold}: must be between 0 and 1")
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', ' ')} {getattr(self, name)}: must be at least 1")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigError(f"patience {self.early_stopping_patience}: must be at least 1 (or unset)")
        if self.width <= 0:
            raise ConfigError(f"width {self.width}: must be positive")
        if self.lr <= 0:
            raise ConfigError(f"lr {self.lr}: the learning rate must be positive")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"grad clip {self.grad_clip}: the max gradient norm must be positive (or unset)")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum {self.momentum}: must be in [0, 1)")
        for name in ("weight_decay", "bce_weight", "dice_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', ' ')} {getattr(self, name)}: must not be negative")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(f"seed {self.seed}: must be in 0..{SEED_LIMIT - 1}")
        if self.workers < 0:
            raise ConfigError(f"workers {self.workers}: must be 0 (load in the main process) or more")
        if self.coarse_epochs < 0:
            raise ConfigError(f"coarse epochs {self.coarse_epochs}: must be 0 (none) or more")
        if not _is_int(self.folds) or self.folds < 1:
            raise ConfigError(f"folds {self.folds!r}: must be a whole number of at least 1 (1 = one split, no folds)")
        if self.fold is not None and (not _is_int(self.fold) or not 1 <= self.fold <= self.folds or self.folds < 2):
            raise ConfigError(f"fold {self.fold!r}: must be one of 1..{self.folds} of a run with --folds 2 or more")

    @property
    def coarse_phase_epochs(self) -> int:
        """How many of the run's first epochs train at the coarse size: `coarse_epochs`, or 0 when the
        run's epochs leave none after them (`--epochs 5` with a 30-epoch coarse phase trains all 5 at
        the input size), a budget alone decides its length (it could end before the full size) or it
        trains at full resolution (`crop`)."""
        if self.coarse_epochs and self.crop is None and self.epochs_cap and self.epochs > self.coarse_epochs:
            return self.coarse_epochs
        return 0

    @property
    def geometry(self) -> Geometry:
        """The network's input and output sizes: its model at its input size (with --crop, the photos
        padded into it whole), as validation and prediction run it."""
        geometry = model_geometry(self.model, self.input_size)
        return geometry.with_content(self.photo_size) if self.photo_size is not None else geometry

    @property
    def step_input_size(self) -> Size:
        """The size of a training step's inputs: the crop with --crop, else the input size."""
        return self.crop or self.input_size

    @property
    def coarse_geometry(self) -> Geometry:
        """The network's sizes in the coarse phase (at `coarse_input_size`)."""
        return model_geometry(self.model, coarse_input_size(self.model, self.input_size))

    @property
    def environment(self) -> Environment:
        """Where this config runs: its `ENVIRONMENT_FIELDS`."""
        return Environment(**{name: getattr(self, name) for name in ENVIRONMENT_FIELDS})

    def with_environment(self, environment: Environment) -> "Config":
        """This recipe in `environment` (every environment field replaced, defaults included)."""
        return dataclasses.replace(self, **{name: getattr(environment, name) for name in ENVIRONMENT_FIELDS})

    def recipe_dict(self) -> dict[str, Any]:
        """`to_dict()` less the environment: the settings that made a checkpoint's weights."""
        return {name: value for name, value in self.to_dict().items() if name not in ENVIRONMENT_FIELDS}

    def replace(self, **changes: Any) -> "Config":
        """A copy with some fields changed (None values are ignored, so unset flags keep the preset)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Primitives only, so a checkpoint holding it loads with torch.load(weights_only=True)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Size):
                value = [value.width, value.height]
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == LEGACY_CHANNELS_LAST and "memory_format" not in data:
                key, value = "memory_format", memory_format_of(value)
            if key not in known:
                continue  # a field from another version of the tool
            if key in SIZE_FIELDS and value is not None:
                value = Size(*value)
            elif key in PATH_FIELDS:
                value = Path(value)
            kwargs[key] = value
        return cls(**kwargs)


PRESETS: dict[str, Config] = {
    # The paper's network: 572 in, 388 out, SGD with high momentum as in the paper.
    "unet_original": Config(
        preset="unet_original", model=UNET_ORIGINAL, input_size=MODEL_SPECS[UNET_ORIGINAL].default_input,
        optimizer="sgd", lr=0.01, momentum=0.99, batch_size=3, epochs=50,
    ),
    # UNet1024 as the Kaggle competitors who shared it trained it: 1024x1024, RMSprop 2e-4.
    "unet1024": Config(
        preset="unet1024", model=UNET1024, input_size=MODEL_SPECS[UNET1024].default_input, optimizer="rmsprop",
        lr=2e-4, batch_size=2, epochs=50,
    ),
    # Default without CUDA: a slim UNet1024 at a 3:2 size that trains on 24 cars in about eight
    # minutes on two cores. Each choice beyond the model was kept for what it gave on real cars the
    # model never saw (docs/benchmarks.md): 384x256 over 192x128, its first 30 of 38 epochs at
    # 192x128 (progressive resizing), soft targets, flip TTA, and keeping the largest car region (a
    # floor band at the frame's bottom edge is otherwise taken for car).
    "cpu": Config(
        preset="cpu", model=UNET1024, input_size=Size(384, 256), width=0.25, optimizer="adam",
        lr=2e-3, batch_size=8, epochs=38, coarse_epochs=30, scheduler="cosine", soft_targets=True, tta=True,
        mask_cleanup="largest",
    ),
}


def preset(name: str) -> Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"preset {name!r}: unknown (choose from {', '.join(PRESETS)})") from None
