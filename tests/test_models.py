"""The two U-Nets: their shapes, the sizes they refuse, and that they train and run in low precision."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from carvana.core.errors import ConfigError
from carvana.core.geometry import Size
from carvana.models import MODEL_SPECS, build_model
from carvana.models.parts import UpCropConcat, UpResizeConcat, center_crop, scale_channels
from carvana.models.specs import UNET1024, UNET_ORIGINAL, UNET_RESNET18, UNET_RESNET34, UNET_VGG11, model_geometry
from carvana.models.unet1024 import UNet1024
from carvana.models.unet_original import UNetOriginal
from carvana.train.losses import BCEDiceLoss

SLIM = 0.125  # a few channels per layer: the shapes of the real nets at a fraction of the cost


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def forward(model: nn.Module, width: int, height: int, batch: int = 1) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, 3, height, width))


def conv_channels(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_channels, m.out_channels) for m in module.modules() if isinstance(m, nn.Conv2d)]


# --- The paper's U-Net -----------------------------------------------------------------------------


def test_paper_unet_maps_572_to_388_with_full_width():
    model = build_model(UNET_ORIGINAL)
    assert model.channels == (64, 128, 256, 512, 1024)
    assert forward(model, 572, 572).shape == (1, 1, 388, 388)


def test_paper_unet_takes_non_square_inputs_width_by_height():
    model = build_model(UNET_ORIGINAL, width=SLIM)
    assert forward(model, 572, 444).shape == (1, 1, 260, 388)  # 388x260 as WxH


def test_paper_unet_output_matches_geometry_at_other_valid_sizes():
    model = build_model(UNET_ORIGINAL, width=SLIM)
    for side_w, side_h in [(188, 204), (236, 188)]:
        geometry = model.geometry(Size(side_w, side_h))
        out = forward(model, side_w, side_h)
        assert (out.shape[-1], out.shape[-2]) == geometry.output_size
        assert geometry == model_geometry(model.name, Size(side_w, side_h))


@pytest.mark.parametrize("side", [570, 571, 573, 100])
def test_paper_unet_rejects_an_unusable_size_naming_it_and_valid_sides(side):
    model = build_model(UNET_ORIGINAL, width=SLIM)
    with pytest.raises(ConfigError, match=rf"{side}.*valid sides nearby"):
        forward(model, side, side)


def test_paper_unet_error_suggests_572_for_570():
    with pytest.raises(ConfigError, match="572"):
        forward(build_model(UNET_ORIGINAL, width=SLIM), 570, 572)


def test_width_scales_the_paper_unet_channels():
    assert build_model(UNET_ORIGINAL, width=0.25).channels == (16, 32, 64, 128, 256)


def test_paper_unet_up_steps_halve_channels_and_concat_the_cropped_encoder_map():
    model = UNetOriginal(base_channels=8)
    ups = list(model.ups)
    assert [(up.up.in_channels, up.up.out_channels) for up in ups] == [(128, 64), (64, 32), (32, 16), (16, 8)]
    # Each decoder conv stack takes the up-sampled half plus the encoder map of its level.
    assert [up.convs[0][0].in_channels for up in ups] == [128, 64, 32, 16]

    encoder_maps: list[torch.Tensor] = []
    concatenated: list[torch.Tensor] = []
    model.inc.register_forward_hook(lambda m, i, out: encoder_maps.append(out))
    for down in list(model.downs)[:-1]:
        down.register_forward_hook(lambda m, i, out: encoder_maps.append(out))
    for up in ups:
        up.convs.register_forward_pre_hook(lambda m, inputs: concatenated.append(inputs[0]))
    forward(model, 204, 188)

    for skip, joined in zip(reversed(encoder_maps), concatenated):
        height, width = joined.shape[-2:]
        assert skip.shape[-2] > height and skip.shape[-1] > width  # valid convs: the skip is larger
        top, left = (skip.shape[-2] - height) // 2, (skip.shape[-1] - width) // 2
        expected = skip[:, :, top : top + height, left : left + width]
        assert torch.equal(joined[:, : skip.shape[1]], expected)


def test_paper_unet_with_attention_gates_its_three_deepest_skips_and_keeps_its_geometry():
    model = build_model(UNET_ORIGINAL, width=SLIM, attention=True)
    assert [up.gate is not None for up in model.ups] == [True, True, True, False]
    assert forward(model, 572, 572).shape == (1, 1, 388, 388)
    plain = set(build_model(UNET_ORIGINAL, width=SLIM).state_dict())
    assert not any(".gate." in name for name in plain) and plain < set(model.state_dict())


def test_center_crop_takes_the_middle_window():
    grid = torch.arange(7 * 9).reshape(1, 1, 7, 9)
    assert torch.equal(center_crop(grid, 3, 5), grid[:, :, 2:5, 2:7])
    with pytest.raises(ValueError):
        center_crop(grid, 8, 5)


# --- UNet1024 ----------------------------------------------------------------------------------------


def test_unet1024_keeps_1024x1024():
    assert forward(build_model(UNET1024, width=SLIM), 1024, 1024).shape == (1, 1, 1024, 1024)


def test_unet1024_full_width_has_the_published_channels():
    model = build_model(UNET1024)
    assert model.encoder_channels == (24, 64, 128, 256, 512, 768)
    assert model.decoder_channels == (512, 256, 128, 64, 24, 24)
    # Encoder stages: two convs each; centre: one 768 conv; decoder: (up + skip) -> out, then two more.
    assert [conv_channels(stage) for stage in model.encoder] == [
        [(3, 24), (24, 24)], [(24, 64), (64, 64)], [(64, 128), (128, 128)],
        [(128, 256), (256, 256)], [(256, 512), (512, 512)], [(512, 768), (768, 768)],
    ]
    assert conv_channels(model.center) == [(768, 768)]
    assert [conv_channels(stage)[0] for stage in model.decoder] == [
        (768 + 768, 512), (512 + 512, 256), (256 + 256, 128), (128 + 128, 64), (64 + 64, 24), (24 + 24, 24),
    ]
    assert all(len(conv_channels(stage)) == 3 for stage in model.decoder)
    assert conv_channels(model.head) == [(24, 1)]
    assert forward(model, 128, 128).shape == (1, 1, 128, 128)


def test_slim_unet1024_works_on_non_square_384x256():
    model = build_model(UNET1024, width=0.25)
    assert model.encoder_channels == (8, 16, 32, 64, 128, 192)
    assert forward(model, 384, 256, batch=2).shape == (2, 1, 256, 384)


@pytest.mark.parametrize("width,height", [(1000, 1000), (384, 250), (32, 64)])
def test_unet1024_rejects_sides_not_divisible_by_64(width, height):
    with pytest.raises(ConfigError, match="divisible by 64"):
        forward(build_model(UNET1024, width=SLIM), width, height)


def test_unet1024_decoder_resizes_to_the_skip_and_concats_it():
    stage = UpResizeConcat(in_channels=8, skip_channels=4, out_channels=4)
    seen: list[torch.Tensor] = []
    stage.convs.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    skip = torch.randn(1, 4, 6, 10)
    out = stage(torch.randn(1, 8, 3, 5), skip)
    assert out.shape == (1, 4, 6, 10)
    assert seen[0].shape == (1, 12, 6, 10) and torch.equal(seen[0][:, 8:], skip)



def test_unet1024_with_attention_gates_its_three_deepest_skips_and_keeps_its_size():
    model = build_model(UNET1024, width=SLIM, attention=True)
    assert [stage.gate is not None for stage in model.decoder] == [True, True, True, False, False, False]
    assert forward(model, 192, 128, batch=2).shape == (2, 1, 128, 192)


def test_unet1024_without_attention_keeps_the_parameter_names_its_checkpoints_were_saved_with():
    names = set(build_model(UNET1024, width=SLIM).state_dict())
    gated = set(build_model(UNET1024, width=SLIM, attention=True).state_dict())
    assert not any(".gate." in name for name in names) and names < gated


def test_a_gated_unet1024_stage_weighs_the_skip_before_concatenating_it():
    stage = UpResizeConcat(in_channels=8, skip_channels=4, out_channels=4, attention=True).eval()
    seen: list[torch.Tensor] = []
    stage.convs.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    skip = torch.randn(1, 4, 6, 10)
    stage(torch.randn(1, 8, 3, 5), skip)
    weights = seen[0][:, 8:] / skip  # the gate's sigmoid, one weight per pixel for every channel
    assert torch.all((weights > 0) & (weights < 1)) and torch.allclose(weights, weights[:, :1].expand_as(weights))

@pytest.mark.parametrize(
    "channels,width,expected", [(24, 1.0, 24), (24, 0.25, 8), (24, 0.125, 4), (768, 0.25, 192), (10, 1.0, 12)]
)
def test_scaled_channel_counts_are_multiples_of_four_and_at_least_four(channels, width, expected):
    assert scale_channels(channels, width) == expected


# --- Both ------------------------------------------------------------------------------------------


def test_registry_names_match_geometry_and_unknown_names_list_the_choices():
    assert set(MODEL_SPECS) == {UNET_ORIGINAL, UNET1024, UNET_RESNET34, UNET_RESNET18, UNET_VGG11}
    assert isinstance(build_model(UNET_ORIGINAL, width=SLIM), UNetOriginal)
    assert isinstance(build_model(UNET1024, width=SLIM), UNet1024)
    assert all(build_model(name, width=SLIM).name == name for name in MODEL_SPECS)
    with pytest.raises(ConfigError, match="unet_original, unet1024"):
        build_model("resnet")
    with pytest.raises(ConfigError, match="width"):
        build_model(UNET1024, width=0)


def test_same_name_and_width_give_the_same_parameter_shapes():
    first, second = build_model(UNET1024, width=0.25), build_model(UNET1024, width=0.25)
    assert {k: v.shape for k, v in first.state_dict().items()} == {k: v.shape for k, v in second.state_dict().items()}
    second.load_state_dict(first.state_dict())


@pytest.mark.parametrize("name,size", [(UNET_ORIGINAL, Size(204, 188)), (UNET1024, Size(192, 128))])
def test_channels_last_bf16_autocast_forward_on_cpu(name, size):
    model = build_model(name, width=SLIM).to(memory_format=torch.channels_last).eval()
    joined: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, (UpCropConcat, UpResizeConcat)):
            module.convs.register_forward_pre_hook(lambda m, inputs: joined.append(inputs[0]))
    x = torch.randn(2, 3, size.height, size.width).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = BCEDiceLoss()(out, torch.zeros(out.shape))
    geometry = model.geometry(size)
    assert out.shape == (2, 1, geometry.output_size.height, geometry.output_size.width)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    # The skip and the up-sampled map are joined in the autocast dtype, not promoted to float32.
    assert joined and all(t.dtype == torch.bfloat16 for t in joined)
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("name,side", [(UNET1024, 64), (UNET_ORIGINAL, 220)])
def test_a_few_optimiser_steps_on_a_tiny_batch_lower_the_loss(name, side):
    model = build_model(name, width=SLIM).train()
    images = torch.rand(2, 3, side, side)
    out_side = model.geometry(Size(side, side)).output_size.height
    masks = torch.zeros(2, 1, out_side, out_side)
    masks[:, :, out_side // 4 : 3 * out_side // 4, out_side // 3 :] = 1.0
    images[:, 0] += torch.nn.functional.pad(masks[:, 0], [(side - out_side) // 2] * 4)  # a learnable cue
    loss_fn = BCEDiceLoss()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        optimiser.zero_grad()
        loss = loss_fn(model(images), masks)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
