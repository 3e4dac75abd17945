"""The input/output geometry of the two U-Nets."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carvana.core.errors import ConfigError
from carvana.core.geometry import Size
from carvana.models.specs import model_geometry
from carvana.models.valid_convolutions import (
    original_output_side,
    original_valid_input_sides,
)


def test_paper_sizes_572_in_388_out_with_a_92_pixel_border():
    g = model_geometry("unet_original", Size(572, 572))
    assert g.output_size == Size(388, 388)
    assert g.border == 92
    assert g.covered_size == Size(388, 388)


def test_non_square_input_for_the_3_to_2_photos():
    g = model_geometry("unet_original", Size(572, 444))
    assert g.output_size == Size(388, 260)
    assert model_geometry("unet1024", Size(384, 256)).output_size == Size(384, 256)


@given(st.integers(1, 1200))
def test_valid_sides_lose_exactly_184_pixels(side):
    out = original_output_side(side)
    if out is not None:
        assert side - out == 184
        assert side in original_valid_input_sides(side, side)


def test_invalid_sizes_are_rejected_with_the_valid_ones_nearby():
    with pytest.raises(ConfigError, match="572"):
        model_geometry("unet_original", Size(570, 572))
    with pytest.raises(ConfigError, match="divisible by 64"):
        model_geometry("unet1024", Size(1000, 1024))
    with pytest.raises(ConfigError, match="unknown"):
        model_geometry("resnet", Size(64, 64))


@pytest.mark.parametrize("text, size", [("572", Size(572, 572)), ("384x256", Size(384, 256)), ("1918×1280", Size(1918, 1280))])
def test_size_parses_width_by_height(text, size):
    assert Size.parse(text) == size
    assert str(Size.parse(text)) == f"{size.width}x{size.height}"


def test_size_parse_rejects_garbage():
    with pytest.raises(ConfigError, match="WIDTHxHEIGHT"):
        Size.parse("big")
