"""The table of models: one `ModelSpec` per net, the one place a model's name is looked up.

Config validation, the CLI's `--model` choices, `build_model` and every geometry question
(`model_geometry`, and the input-size choices in `carvana.models.input_sizes`) read `MODEL_SPECS`.
Importing this module does not import torch: each spec's builder imports its net when called.

UNetOriginal's geometry is the valid-convolution arithmetic of `carvana.models.valid_convolutions`.
UNet1024 uses padded convolutions and six 2x2 pools: output size = input size, and each side
must be divisible by 64. The encoder U-Nets (`carvana.models.encoder_unet`) halve five times: output
size = input size, each side divisible by 32.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable

from carvana.core.errors import ConfigError
from carvana.core.geometry import Geometry, Size
from carvana.models.valid_convolutions import original_geometry, original_valid_sides

if TYPE_CHECKING:
    from carvana.models.base import SegmentationNet

UNET_ORIGINAL = "unet_original"
UNET1024 = "unet1024"
UNET_RESNET34 = "unet_resnet34"
UNET_RESNET18 = "unet_resnet18"
UNET_VGG11 = "unet_vgg11"

PAPER_BASE_CHANNELS = 64  # UNetOriginal's first-level channels in the paper, scaled by `width`
UNET1024_DIVISOR = 64  # 2 ** 6 max-pools
ENCODER_UNET_DIVISOR = 32  # 2 ** 5 halvings of a ResNet or VGG encoder
UNET_OPTIONS = ("attention",)  # every U-Net's: gates on its deepest skips (carvana.models.parts)
ENCODER_UNET_OPTIONS = ("upsample", *UNET_OPTIONS)  # see carvana.models.encoder_unet
UPSAMPLE_MODES = ("transpose", "pixelshuffle", "bilinear")  # the encoder U-Nets' `upsample`, default first
ENCODER_WEIGHTS = ("imagenet", "none")  # or a file's path: carvana.models.pretrained


@dataclass(frozen=True)
class ModelSpec:
    """Everything the pipeline knows about one model, keyed by its `name`.

    same_size: whether the net keeps its input's size (padded convolutions, no border);
    default_input: the input size of the model's own preset;
    geometry: input size -> Geometry, a ConfigError naming valid sizes for a size the net can't take;
    valid_sides: most pixels -> the input sides the net can take, smallest first, that leave room
        for its smallest side as the other side within that many pixels;
    builder: width (and `options` by keyword) -> a freshly initialised net (imports torch and the
        net's module when called);
    options: the builder's keyword options beyond width, e.g. the encoder U-Nets' `upsample`;
    encoder: whether the net's `encoder` is a classification backbone (`carvana.models.encoders`) that
        takes ImageNet weights (`carvana.models.pretrained`), its own learning rate and freezing.
    """

    name: str
    same_size: bool
    default_input: Size
    geometry: Callable[[Size], Geometry]
    valid_sides: Callable[[float], list[int]]
    builder: Callable[..., "SegmentationNet"]
    options: tuple[str, ...] = ()
    encoder: bool = False


def _build_unet_original(width: float, attention: bool = False) -> "SegmentationNet":
    """The paper's U-Net with `width` times its 64 first-level channels, with attention gates or without."""
    from carvana.models.parts import scale_channels
    from carvana.models.unet_original import UNetOriginal

    return UNetOriginal(base_channels=scale_channels(PAPER_BASE_CHANNELS, width), attention=attention)


def _divisible_geometry(model: str, divisor: int, input_size: Size) -> Geometry:
    """Output = input for a same-size net; a ConfigError for a side not divisible by `divisor`."""
    for side in input_size:
        if side <= 0 or side % divisor:
            raise ConfigError(
                f"input size {input_size}: {model} needs sides divisible by {divisor} ({side} is not; "
                f"e.g. {16 * divisor}x{16 * divisor}, {24 * divisor}x{16 * divisor}, {6 * divisor}x{4 * divisor})"
            )
    return Geometry(model, input_size, input_size, 0)


def _divisible_sides(divisor: int, most_pixels: float) -> list[int]:
    """The multiples of `divisor` that leave room for the smallest one within `most_pixels`."""
    return list(range(divisor, int(most_pixels // divisor) + 1, divisor))


def _build_unet1024(width: float, attention: bool = False) -> "SegmentationNet":
    """UNet1024 with every channel count scaled by `width`, with attention gates or without."""
    from carvana.models.unet1024 import UNet1024

    return UNet1024(width=width, attention=attention)


def _build_encoder_unet(model: str, width: float, **options: object) -> "SegmentationNet":
    """The encoder U-Net called `model`, its decoder scaled by `width`, with `options` (upsample,
    attention); its encoder freshly initialised (`carvana.models.pretrained` loads ImageNet weights)."""
    from carvana.models.encoder_unet import UNetResNet18, UNetResNet34, UNetVGG11

    nets = {UNET_RESNET34: UNetResNet34, UNET_RESNET18: UNetResNet18, UNET_VGG11: UNetVGG11}
    return nets[model](width, **options)


def _encoder_unet_spec(model: str) -> ModelSpec:
    # No preset of their own yet: the unet1024 preset's input size, which they take.
    return ModelSpec(
        name=model, same_size=True, default_input=Size(1024, 1024),
        geometry=partial(_divisible_geometry, model, ENCODER_UNET_DIVISOR),
        valid_sides=partial(_divisible_sides, ENCODER_UNET_DIVISOR),
        builder=partial(_build_encoder_unet, model), options=ENCODER_UNET_OPTIONS, encoder=True,
    )


MODEL_SPECS: dict[str, ModelSpec] = {
    UNET_ORIGINAL: ModelSpec(
        name=UNET_ORIGINAL, same_size=False, default_input=Size(572, 572),
        geometry=partial(original_geometry, UNET_ORIGINAL), valid_sides=original_valid_sides,
        builder=_build_unet_original, options=UNET_OPTIONS,
    ),
    UNET1024: ModelSpec(
        name=UNET1024, same_size=True, default_input=Size(1024, 1024),
        geometry=partial(_divisible_geometry, UNET1024, UNET1024_DIVISOR),
        valid_sides=partial(_divisible_sides, UNET1024_DIVISOR), builder=_build_unet1024, options=UNET_OPTIONS,
    ),
    **{model: _encoder_unet_spec(model) for model in (UNET_RESNET34, UNET_RESNET18, UNET_VGG11)},
}
MODEL_NAMES = tuple(MODEL_SPECS)


def model_spec(name: str) -> ModelSpec:
    """The spec of the model called `name`; a ConfigError listing the choices for an unknown name."""
    try:
        return MODEL_SPECS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"model {name!r}: unknown (choose from {', '.join(MODEL_NAMES)})") from None


def model_geometry(model: str, input_size: Size) -> Geometry:
    """Geometry of `model` at `input_size`; raises ConfigError with valid sizes when it can't work."""
    return model_spec(model).geometry(input_size)
