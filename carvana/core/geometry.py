"""Image sizes and how images map onto a model, with no knowledge of any one model.

`Size` is an image size, `Geometry` what a model takes in and gives out at one size. Which sizes a
model can take, and the geometry it gives, are in its spec (`carvana.models.specs`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple, TypeVar

from carvana.core.errors import ConfigError


class Size(NamedTuple):
    """An image size. Written WxH everywhere users see it (1918x1280), like the photos."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @classmethod
    def parse(cls, text: str) -> "Size":
        """Parse '572', '572x572' or '384x256' (width x height); each side a positive whole number."""
        parts = text.strip().lower().replace("×", "x").split("x")
        sides: list[int] = []
        for part in parts if len(parts) in (1, 2) else ():
            part = part.strip()
            if not (part.isascii() and part.isdigit()) or int(part) < 1:  # also refuses signs, decimals and '1e3'
                break
            sides.append(int(part))
        else:
            if len(sides) == 1:
                return cls(sides[0], sides[0])
            if len(sides) == 2:
                return cls(sides[0], sides[1])
        raise ConfigError(f"size {text!r}: expected WIDTHxHEIGHT in whole pixels above 0, e.g. 384x256, "
                          "or one number for a square")

T = TypeVar("T")  # an array-like that slices like numpy (a tensor or an ndarray)


@dataclass(frozen=True)
class Geometry:
    """How images map onto a model: what size goes in, what comes out, and the margins between.

    A photo (and its mask) is resized to the *covered size* and then mirror-padded to the input size.
    For the paper's valid-convolution net the output is the covered size: the net eats the `border`
    of padding on each side. For a same-size net the covered size is its output size, unless the
    geometry has a `content_size`: then the photo is padded into a larger input, unresized (--crop:
    1918x1280 photos in a 1920x1280 input), and the output's margins are cropped off again. Margins
    are split evenly between the two sides (the odd pixel on the right, at the bottom), so a mirror
    image of the input has the photo where the input had it (flip TTA).
    """

    model: str
    input_size: Size
    output_size: Size
    border: int  # pixels of mirror padding on each side that the net's valid convolutions eat (0 for same-size nets)
    content_size: Size | None = None  # a photo padded into the output unresized (None: the photo fills the output)

    def __post_init__(self) -> None:
        content = self.content_size
        if content is not None and (content.width > self.output_size.width or content.height > self.output_size.height):
            raise ConfigError(f"photos of {content} do not fit into the output {self.output_size} of {self.model}")

    @property
    def covered_size(self) -> Size:
        """The size an image (and its mask) is resized to; the output, its margins cropped, covers exactly this."""
        return self.content_size or self.output_size

    @property
    def input_margins(self) -> Margins:
        """The mirror padding around a covered-size image that makes the model's input."""
        return Margins.between(self.input_size, self.covered_size)

    @property
    def output_margins(self) -> Margins:
        """What `crop_output` cuts off the model's output: the padding that is not the photo (none but with
        a `content_size`)."""
        return Margins.between(self.output_size, self.covered_size)

    def with_content(self, content_size: Size) -> "Geometry":
        """This geometry with photos of `content_size` padded into its output, unresized (same-size nets only)."""
        if self.border or self.input_size != self.output_size:
            raise ConfigError(f"{self.model} takes {self.input_size} and gives {self.output_size}: only a same-size "
                              "net can predict a padded photo whole")
        return replace(self, content_size=content_size)

    def crop_to_covered(self, inputs: T) -> T:
        """The covered-size image inside (..., H_in, W_in) model inputs (tensors or arrays): the inputs
        without their mirror padding."""
        return self.input_margins.crop(inputs)

    def crop_output(self, outputs: T) -> T:
        """The covered-size part of (..., H_out, W_out) model outputs: the outputs without their margins."""
        return self.output_margins.crop(outputs)


class Margins(NamedTuple):
    """Pixels around an image inside a larger one, on each side."""

    top: int
    bottom: int
    left: int
    right: int

    @classmethod
    def between(cls, outer: Size, inner: Size) -> "Margins":
        """`outer` less `inner` split evenly, the odd pixel to the bottom and the right."""
        across, down = outer.width - inner.width, outer.height - inner.height
        if across < 0 or down < 0:
            raise ConfigError(f"size {inner} does not fit into {outer}")
        return cls(down // 2, down - down // 2, across // 2, across - across // 2)

    @property
    def none(self) -> bool:
        return not any(self)

    def crop(self, images: T) -> T:
        """The inner image of (..., H, W) arrays or tensors."""
        if self.none:
            return images
        height, width = images.shape[-2], images.shape[-1]
        return images[..., self.top:height - self.bottom, self.left:width - self.right]


def aspect(size: Size) -> float:
    """Width over height."""
    return size.width / size.height


def aspect_difference(a: Size, b: Size) -> float:
    """How far apart two sizes' shapes are, as a fraction: 0 for the same aspect, 0.5 for 3:2 against 1:1."""
    wider, narrower = sorted((aspect(a), aspect(b)), reverse=True)
    return wider / narrower - 1
