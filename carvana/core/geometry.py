"""Image sizes and how images map onto a model, with no knowledge of any one model.

`Size` is an image size, `Geometry` what a model takes in and gives out at one size. Which sizes a
model can take, and the geometry it gives, are in its spec (`carvana.models.specs`).
"""
from __future__ import annotations

from dataclasses import dataclass
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
    """How images map onto a model: what size goes in, what comes out, and the border between."""

    model: str
    input_size: Size
    output_size: Size
    border: int  # pixels of mirror padding on each side (0 for same-size nets)

    @property
    def covered_size(self) -> Size:
        """The size an image (and its mask) is resized to; the output covers exactly this."""
        return self.output_size

    def crop_to_output(self, inputs: T) -> T:
        """The part of (..., H_in, W_in) model inputs (tensors or arrays) that the output covers:
        without the mirror border on each side."""
        border = self.border
        return inputs if border == 0 else inputs[..., border:-border, border:-border]


def aspect(size: Size) -> float:
    """Width over height."""
    return size.width / size.height


def aspect_difference(a: Size, b: Size) -> float:
    """How far apart two sizes' shapes are, as a fraction: 0 for the same aspect, 0.5 for 3:2 against 1:1."""
    wider, narrower = sorted((aspect(a), aspect(b)), reverse=True)
    return wider / narrower - 1
