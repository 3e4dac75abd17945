"""The encoder U-Nets (ResNet34, ResNet18, VGG11): shapes, the sizes they refuse, their decoder options,
and ImageNet weights in torchvision's layout, downloaded (from a loopback server here) or read from a file."""
from __future__ import annotations

import hashlib
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from carvana.core.errors import CarvanaError, ConfigError
from carvana.core.geometry import Size
from carvana.models import build_model, model_spec, pretrained
from carvana.models.encoder_unet import PixelShuffleUp
from carvana.models.encoders import ResNetEncoder, VGG11Encoder
from carvana.models.parts import AttentionGate
from carvana.models.pretrained import load_encoder_weights
from carvana.models.specs import UNET1024, UNET_RESNET18, UNET_RESNET34, UNET_VGG11, UPSAMPLE_MODES

ENCODER_UNETS = (UNET_RESNET34, UNET_RESNET18, UNET_VGG11)
SLIM = 0.25
# torchvision's published parameter counts (the weights' meta, `num_params`) and its classifiers' shapes.
TORCHVISION_PARAMETERS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "vgg11": 132_863_336}
CLASSIFIERS = {"resnet18": {"fc.weight": (1000, 512), "fc.bias": (1000,)},
               "resnet34": {"fc.weight": (1000, 512), "fc.bias": (1000,)},
               "vgg11": {"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
                         "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
                         "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)}}


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def torchvision_file(folder: Path, encoder: torch.nn.Module, name: str | None = None) -> Path:
    """`encoder`'s weights with a classifier, as torchvision publishes them, in a file named as torch hub
    wants it for a hash check (`<arch>-<first 8 hex digits of its SHA-256>.pth`) unless `name` is given."""
    # The classifier as views of one zero (VGG11's holds 124M numbers, which the loader drops anyway).
    classifier = {key: torch.zeros(1).expand(shape) for key, shape in CLASSIFIERS[encoder.arch].items()}
    state = {**encoder.state_dict(), **classifier}
    written = folder / "weights.pth"
    torch.save(state, written)
    digest = hashlib.sha256(written.read_bytes()).hexdigest()
    return written.rename(folder / (name or f"{encoder.arch}-{digest[:8]}.pth"))


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A loopback HTTP server of a folder, and torch hub's cache in a fresh folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert torch.hub.get_dir().startswith(str(tmp_path))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    theirs = second.state_dict()
    return all(torch.equal(value, theirs[key]) for key, value in first.state_dict().items())


# --------------------------------------------------------------------------- the nets


@pytest.mark.parametrize("name", ENCODER_UNETS)
def test_each_encoder_unet_keeps_the_input_size_and_learns_through_encoder_and_decoder(name):
    model = build_model(name, width=SLIM).train()
    images = torch.randn(2, 3, 64, 128)
    logits = model(images)
    assert logits.shape == (2, 1, 64, 128)
    assert model.geometry(Size(128, 64)).output_size == Size(128, 64)
    logits.square().mean().backward()
    for part in (model.encoder, model.decoder, model.head):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


@pytest.mark.parametrize("upsample", UPSAMPLE_MODES)
@pytest.mark.parametrize("attention", [False, True])
def test_every_upsampling_with_and_without_attention_gives_a_mask_of_the_input_size(upsample, attention):
    model = build_model(UNET_RESNET18, width=SLIM, upsample=upsample, attention=attention).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 32)).shape == (1, 1, 64, 32)
    gates = [m for m in model.modules() if isinstance(m, AttentionGate)]
    assert len(gates) == (3 if attention else 0)


def test_attention_gates_sit_on_the_deepest_skips():
    model = build_model(UNET_VGG11, width=SLIM, attention=True)
    gated = [block.gate is not None for block in model.decoder]
    assert gated == [True, True, True, False, False]


def test_pixel_shuffle_starts_as_nearest_neighbour_up_sampling():
    up = build_model(UNET_RESNET18, width=SLIM, upsample="pixelshuffle").decoder[0].up
    assert isinstance(up, PixelShuffleUp)
    out = up(torch.randn(1, up[0].in_channels, 4, 4))
    assert torch.equal(out[..., ::2, ::2], out[..., 1::2, 1::2])  # the four sub-pixels of each pixel agree


def test_width_scales_the_decoder_only():
    slim, full = build_model(UNET_RESNET18, width=SLIM), build_model(UNET_RESNET18)
    assert full.decoder_channels == (256, 128, 64, 32, 16) and slim.decoder_channels == (64, 32, 16, 8, 4)
    assert sum(p.numel() for p in slim.encoder.parameters()) == sum(p.numel() for p in full.encoder.parameters())


@pytest.mark.parametrize("name", ENCODER_UNETS)
def test_sides_not_divisible_by_32_are_refused_naming_valid_ones(name):
    with pytest.raises(ConfigError, match="divisible by 32.*512x512"):
        build_model(name, width=SLIM)(torch.randn(1, 3, 64, 100))
    assert model_spec(name).valid_sides(64 * 96) == [32, 64, 96, 128, 160, 192]


def test_options_are_checked_by_name_and_value():
    with pytest.raises(ConfigError, match="upsample 'nearest': choose from transpose, pixelshuffle, bilinear"):
        build_model(UNET_RESNET18, upsample="nearest")
    with pytest.raises(ConfigError, match="unet1024 takes no option upsample"):
        build_model(UNET1024, 0.125, upsample="bilinear")


# --------------------------------------------------------------------------- torchvision's layout


@pytest.mark.parametrize("encoder", [ResNetEncoder("resnet18"), ResNetEncoder("resnet34"), VGG11Encoder()],
                         ids=lambda e: e.arch)
def test_the_encoder_and_torchvisions_classifier_make_up_torchvisions_published_parameter_count(encoder):
    classifier = sum(torch.Size(shape).numel() for shape in CLASSIFIERS[encoder.arch].values())
    assert sum(p.numel() for p in encoder.parameters()) + classifier == TORCHVISION_PARAMETERS[encoder.arch]


def test_encoder_keys_are_torchvisions():
    resnet = {key: tuple(v.shape) for key, v in ResNetEncoder("resnet34").state_dict().items()}
    assert resnet["conv1.weight"] == (64, 3, 7, 7) and resnet["bn1.running_var"] == (64,)
    assert resnet["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert resnet["layer3.5.conv2.weight"] == (256, 256, 3, 3) and "layer1.0.downsample.0.weight" not in resnet
    vgg = {key: tuple(v.shape) for key, v in VGG11Encoder().state_dict().items()}
    assert sorted(vgg) == sorted(f"features.{i}.{p}" for i in (0, 3, 6, 8, 11, 13, 16, 18) for p in ("weight", "bias"))
    assert vgg["features.3.weight"] == (128, 64, 3, 3) and vgg["features.18.weight"] == (512, 512, 3, 3)


def test_imagenet_weights_download_through_torch_hub_once_with_their_hash_checked(served, monkeypatch):
    folder, address, server = served
    source = ResNetEncoder("resnet18")
    served_file = torchvision_file(folder, source)
    monkeypatch.setitem(pretrained.IMAGENET_WEIGHTS, "resnet18", f"{address}/{served_file.name}")
    model = build_model(UNET_RESNET18, width=SLIM)
    load_encoder_weights(model.encoder, "imagenet")
    assert same_weights(source, model.encoder)
    assert (Path(torch.hub.get_dir()) / "checkpoints" / served_file.name).is_file()
    server.shutdown()  # the second time, from the cache
    fresh = ResNetEncoder("resnet18")
    load_encoder_weights(fresh, "imagenet")
    assert same_weights(source, fresh)


def test_a_download_with_another_hash_is_refused_and_not_cached(served, monkeypatch):
    folder, address, _ = served
    served_file = torchvision_file(folder, ResNetEncoder("resnet18"), name="resnet18-00000000.pth")
    monkeypatch.setitem(pretrained.IMAGENET_WEIGHTS, "resnet18", f"{address}/{served_file.name}")
    with pytest.raises(CarvanaError, match="invalid hash"):
        load_encoder_weights(ResNetEncoder("resnet18"), "imagenet")
    assert not list((Path(torch.hub.get_dir()) / "checkpoints").iterdir())


def test_without_network_it_says_so_and_names_the_offline_option(served, monkeypatch):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/resnet18-f37072fd.pth"
    monkeypatch.setitem(pretrained.IMAGENET_WEIGHTS, "resnet18", url)
    with pytest.raises(CarvanaError, match="cannot download") as error:
        load_encoder_weights(ResNetEncoder("resnet18"), "imagenet")
    message = str(error.value)
    assert url in message and "offline" in message and "path" in message and "\n" not in message


def test_a_damaged_copy_in_torch_hubs_cache_is_refused_naming_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    (cache / Path(pretrained.IMAGENET_WEIGHTS["resnet18"]).name).write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CarvanaError, match="encoder weights imagenet: .*deleted") as error:
        load_encoder_weights(ResNetEncoder("resnet18"), "imagenet")
    assert str(cache) in str(error.value) and "\n" not in str(error.value)


def test_a_local_file_loads_offline_and_none_keeps_the_initialisation(tmp_path):
    source = VGG11Encoder()
    path = torchvision_file(tmp_path, source)
    model = build_model(UNET_VGG11, width=SLIM)
    initial = {key: value.clone() for key, value in model.encoder.state_dict().items()}
    load_encoder_weights(model.encoder, "none")
    assert all(torch.equal(value, initial[key]) for key, value in model.encoder.state_dict().items())
    load_encoder_weights(model.encoder, str(path))
    assert same_weights(source, model.encoder)


def test_partial_and_mismatched_files_are_refused_naming_the_keys_and_nothing_is_loaded(tmp_path):
    target = ResNetEncoder("resnet18")
    before = {key: value.clone() for key, value in target.state_dict().items()}
    state = ResNetEncoder("resnet18").state_dict()
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "layer4.1.bn2.weight"}, "1 missing.*layer4.1.bn2.weight"),
        "extra": ({**state, "layer5.0.conv1.weight": torch.zeros(1)}, "1 unexpected.*layer5.0.conv1.weight"),
        "shape": ({**state, "conv1.weight": torch.zeros(64, 3, 3, 3)}, r"conv1.weight \(64, 3, 3, 3\)"),
    }
    for name, (contents, expected) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(contents, path)
        with pytest.raises(CarvanaError, match=expected):
            load_encoder_weights(target, str(path))
    with pytest.raises(CarvanaError, match="not torchvision's resnet34 layout: 80 missing .*layer1.2"):
        load_encoder_weights(ResNetEncoder("resnet34"), str(torchvision_file(tmp_path, ResNetEncoder("resnet18"))))
    assert all(torch.equal(value, before[key]) for key, value in target.state_dict().items())


def test_corrupt_and_missing_files_are_refused_in_one_line(tmp_path):
    good = torchvision_file(tmp_path, ResNetEncoder("resnet18"))
    damaged = {"truncated.pth": good.read_bytes()[: good.stat().st_size // 2],
               "garbage.pth": b"hello, not a checkpoint" * 9, "empty.pth": b""}
    for name, contents in damaged.items():
        (tmp_path / name).write_bytes(contents)
        with pytest.raises(CarvanaError, match="not a readable checkpoint") as error:
            load_encoder_weights(ResNetEncoder("resnet18"), str(tmp_path / name))
        assert "\n" not in str(error.value)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CarvanaError, match="not a state dict"):
        load_encoder_weights(ResNetEncoder("resnet18"), str(tmp_path / "list.pth"))
    with pytest.raises(ConfigError, match="no such file.*imagenet, none"):
        load_encoder_weights(ResNetEncoder("resnet18"), str(tmp_path / "absent.pth"))
