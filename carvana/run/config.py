"""One typed configuration for a run, with named presets.

A preset is a complete, tested set of choices (model, input size, optimiser, batch, epochs);
command-line flags override single fields of it (`carvana.run.flags`). `Config` is plain data in
two groups of fields: the recipe (what makes the weights: model, input size, optimiser, loss,
threshold, seed, ...) and the `Environment` (where it runs: folders, device, workers). Every
checkpoint keeps the two apart, as dicts of primitives, so that `--resume` continues the same run
where it ran and `predict` rebuilds the same model wherever it runs.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carvana.core.errors import ConfigError
from carvana.core.geometry import Geometry, Size
from carvana.models import build_model
from carvana.models.input_sizes import coarse_input_size
from carvana.models.specs import (ENCODER_UNET_OPTIONS, MODEL_SPECS, UNET1024, UNET_ORIGINAL, UNET_RESNET34,
                                  model_geometry, model_spec)
from carvana.run.fields import FIELDS, fields_of_kind, shown

if TYPE_CHECKING:
    from carvana.models.base import SegmentationNet

PATH_FIELDS = fields_of_kind("path")
SIZE_FIELDS = fields_of_kind("size")  # WxH sizes, [width, height] in a checkpoint
LEGACY_CHANNELS_LAST = "channels_last"  # the setting `memory_format` replaced (checkpoints, config.yaml)


def _primitive(value: Any) -> Any:
    """A setting as a checkpoint keeps it (torch.load(weights_only=True) takes primitives only): a size as
    [width, height], a path as text."""
    if isinstance(value, Size):
        return list(value)
    return str(value) if isinstance(value, Path) else value


def _typed(name: str, value: Any) -> Any:
    """The setting `name` from its primitive (`_primitive`); a malformed size is left for the checks to refuse."""
    if name in SIZE_FIELDS and isinstance(value, list) and len(value) == 2:
        return Size(*value)
    return Path(value) if name in PATH_FIELDS else value


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
        return {f.name: _primitive(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Environment":
        """The fields of `data` this version knows (others, from another version of the tool, are skipped)."""
        known = [f.name for f in dataclasses.fields(cls) if f.name in data]
        return cls(**{name: _typed(name, data[name]) for name in known})


# The Config fields that say where a run runs (`Environment`); the others are its recipe.
ENVIRONMENT_FIELDS = tuple(f.name for f in dataclasses.fields(Environment))


def memory_format_of(channels_last: Any) -> str:
    """The `memory_format` of a setting from before it existed, `channels_last: true/false`: false was
    --no-channels-last, which forced NCHW; true was the default, which `auto` is now."""
    if not isinstance(channels_last, bool):
        raise ConfigError(f"channels last {shown(channels_last)}: must be true or false")
    return "auto" if channels_last else "nchw"


@dataclass(frozen=True)
class Config:
    preset: str = "cpu"
    # Model
    model: str = UNET1024
    input_size: Size = Size(384, 256)
    width: float = 1.0  # channel multiplier; < 1 gives a slimmer net of the same shape
    # Attention gates on the deepest skips (every model). The encoder U-Nets' (carvana.models.encoder_unet):
    # the decoder's up-sampling, the encoder's starting weights (imagenet, none or a file: a new run's,
    # carvana.models.pretrained), its learning rate as a share of `lr`, and the first epochs it is kept fixed.
    upsample: str = "transpose"
    attention: bool = False
    encoder_weights: str = "none"
    encoder_lr_scale: float = 1.0
    encoder_freeze_epochs: int = 0
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
        """Each value checked as its flag checks its text (`FIELDS`), then the rules between settings."""
        for name, field in FIELDS.items():
            try:
                field.check(getattr(self, name))
            except argparse.ArgumentTypeError as e:
                raise ConfigError(f"{name.replace('_', ' ')} {e}") from None
        spec = model_spec(self.model)
        if not self.epochs_cap and self.max_steps is None and self.max_time is None:
            raise ConfigError("epochs: without --max-steps or --max-time the run needs --epochs to end")
        if self.fold is not None and (self.fold > self.folds or self.folds < 2):
            raise ConfigError(f"fold {self.fold}: must be one of 1..{self.folds} of a run with --folds 2 or more")
        spec.geometry(self.input_size)  # raises a ConfigError naming valid sizes
        self._check_model_options()
        if self.crop is not None or self.photo_size is not None:
            self._check_crop()
        elif self.coarse_epochs:
            coarse_input_size(self.model, self.input_size)  # a ConfigError for a net that cannot take it

    def _check_model_options(self) -> None:
        """A model setting set for a model that does not take it: refused, naming the models that do."""
        for name in MODEL_OPTION_FIELDS:
            if name not in options_of(self.model) and getattr(self, name) != DEFAULTS[name]:
                takers = [model for model in MODEL_SPECS if name in options_of(model)]
                raise ConfigError(f"{name.replace('_', ' ')} {shown(getattr(self, name))}: {self.model} has no such "
                                  f"option ({', '.join(takers)} take it)")

    def new_model(self) -> "SegmentationNet":
        """A freshly initialised net of this model, width and the model's options (e.g. upsample, attention)."""
        options = {name: getattr(self, name) for name in model_spec(self.model).options}
        return build_model(self.model, self.width, **options)

    def _check_crop(self) -> None:
        """--crop: a same-size net, a crop it can take, and photos that fit into its input whole."""
        spec = model_spec(self.model)
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
        return {f.name: _primitive(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """The settings of `data` (`to_dict`'s) this version knows; others, from another version, are skipped."""
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == LEGACY_CHANNELS_LAST and "memory_format" not in data:
                key, value = "memory_format", memory_format_of(value)
            if key in FIELDS:
                kwargs[key] = _typed(key, value)
        return cls(**kwargs)


# The settings of an encoder U-Net's encoder (its decoder's are its spec's `options`), and every field's default.
ENCODER_FIELDS = ("encoder_weights", "encoder_lr_scale", "encoder_freeze_epochs")
MODEL_OPTION_FIELDS = (*ENCODER_UNET_OPTIONS, *ENCODER_FIELDS)
DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}


def options_of(model: str) -> tuple[str, ...]:
    """The settings of `MODEL_OPTION_FIELDS` that `model` takes: its builder's options, and its encoder's."""
    spec = model_spec(model)
    return (*spec.options, *(ENCODER_FIELDS if spec.encoder else ()))


def model_choices(settings: Mapping[str, Any]) -> list[str]:
    """A model's choices (attention gates; an encoder U-Net's decoder and encoder) that are not the defaults,
    in words (`settings`: a Config's `to_dict()`, as a checkpoint holds it), e.g. ["bilinear", "attention",
    "imagenet encoder", "encoder lr x0.1"]."""
    words = []
    if settings.get("upsample", "transpose") != "transpose":
        words.append(str(settings["upsample"]))
    if settings.get("attention") is True:
        words.append("attention")
    if settings.get("encoder_weights", "none") != "none":
        words.append(f"{Path(str(settings['encoder_weights'])).name} encoder")
    if settings.get("encoder_lr_scale", 1.0) != 1.0:
        words.append(f"encoder lr x{settings['encoder_lr_scale']}")
    if settings.get("encoder_freeze_epochs"):
        words.append(f"encoder frozen {settings['encoder_freeze_epochs']} epoch(s)")
    return words


PRESETS: dict[str, Config] = {config.preset: config for config in (
    # The paper's network: 572 in, 388 out, SGD with high momentum as in the paper.
    Config(
        preset="unet_original", model=UNET_ORIGINAL, input_size=MODEL_SPECS[UNET_ORIGINAL].default_input,
        optimizer="sgd", lr=0.01, momentum=0.99, batch_size=3, epochs=50,
    ),
    # UNet1024 as the Kaggle competitors who shared it trained it: 1024x1024, RMSprop 2e-4.
    Config(
        preset="unet1024", model=UNET1024, input_size=MODEL_SPECS[UNET1024].default_input, optimizer="rmsprop",
        lr=2e-4, batch_size=2, epochs=50,
    ),
    # Default without CUDA: a slim UNet1024 at a 3:2 size that trains on 24 cars in about eight
    # minutes on two cores. Each choice beyond the model was kept for what it gave on real cars the
    # model never saw (docs/benchmarks.md): 384x256 over 192x128, its first 30 of 38 epochs at
    # 192x128 (progressive resizing), soft targets, flip TTA, and keeping the largest car region (a
    # floor band at the frame's bottom edge is otherwise taken for car).
    Config(
        preset="cpu", model=UNET1024, input_size=Size(384, 256), width=0.25, optimizer="adam",
        lr=2e-3, batch_size=8, epochs=38, coarse_epochs=30, scheduler="cosine", soft_targets=True, tta=True,
        mask_cleanup="largest",
    ),
    # For a GPU: a U-Net on an ImageNet-pretrained ResNet34 (the Carvana winners' kind of model; Adam 1e-4
    # as TernausNet trained it), the encoder kept fixed for the first epoch while the decoder starts. At
    # UNet1024's input, so the two compare; not measured on a GPU here yet, so not the default.
    Config(
        preset="unet_resnet34", model=UNET_RESNET34, input_size=Size(1024, 1024), optimizer="adam", lr=1e-4,
        batch_size=4, epochs=50, scheduler="cosine", encoder_weights="imagenet", encoder_freeze_epochs=1,
    ),
)}


def preset(name: str) -> Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"preset {name!r}: unknown (choose from {', '.join(PRESETS)})") from None
