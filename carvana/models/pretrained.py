"""ImageNet weights for the encoder U-Nets' encoders: `load_encoder_weights(net.encoder, source)`.

`source` is "none" (keep the fresh initialisation), "imagenet" (torchvision's published checkpoint,
downloaded once through `torch.hub.load_state_dict_from_url` into torch hub's cache,
`$TORCH_HOME/hub/checkpoints`, its SHA-256 checked against the hash in its file name) or the path of
such a file, for a machine without internet. The file must hold exactly the encoder's tensors in
torchvision's layout (`carvana.models.encoders`), plus the classifier, which is dropped: a file that
misses any, has others or other shapes is refused, never half loaded.

Inputs must be ImageNet-normalised for these weights to see what they were trained on;
`carvana.models.forward_pass` normalises every batch so, for every net.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from carvana.core.errors import CheckpointError, ConfigError
from carvana.models.specs import ENCODER_WEIGHTS

IMAGENET_WEIGHTS = {  # torchvision's IMAGENET1K_V1 weights
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "vgg11": "https://download.pytorch.org/models/vgg11-8a719046.pth",
}
# What torch.load raises for a file that is not a readable checkpoint (damaged, truncated, not one at all).
UNREADABLE = (RuntimeError, EOFError, ValueError, KeyError, IndexError, pickle.UnpicklingError, zipfile.BadZipFile)
SHOWN = 3  # key names a refusal lists


def load_encoder_weights(encoder: nn.Module, source: str) -> None:
    """Load `source`'s weights ("none", "imagenet" or a file's path) into `encoder` (one of
    `carvana.models.encoders`), all or none; a CarvanaError in one line for a file that cannot be
    had, read or loaded whole."""
    if source == "none":
        return
    state = imagenet_state_dict(encoder.arch) if source == "imagenet" else _read_file(Path(source))
    encoder.load_state_dict(_encoder_part(encoder, state, source))


def imagenet_state_dict(arch: str) -> dict[str, Any]:
    """torchvision's ImageNet state dict of `arch`, from torch hub's cache or downloaded into it."""
    url = IMAGENET_WEIGHTS[arch]
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True, weights_only=True)
    except OSError as error:  # no network, name not resolved, refused, an HTTP error
        reason = getattr(error, "reason", None) or error.strerror or error
        raise CheckpointError(f"encoder weights imagenet: cannot download {url} ({reason}); offline, download "
                              "that file on a machine with internet and give its path (--encoder-weights PATH)") from None
    except UNREADABLE as error:  # the hash differs (the download is not the published file) or a damaged cache
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise CheckpointError(f"encoder weights imagenet: {url}: {_first_line(error)} (a damaged copy in {cache} "
                              "is downloaded again once deleted)") from None


def check_source(source: str) -> None:
    """A ConfigError in one line when `source` is neither imagenet, none nor a file: checked before a new run
    gets its data, not after."""
    if source not in ENCODER_WEIGHTS and not Path(source).is_file():
        raise ConfigError(f"encoder weights {source!r}: no such file (choose {', '.join(ENCODER_WEIGHTS)} "
                          "or the path of a torchvision checkpoint)")


def _read_file(path: Path) -> Any:
    check_source(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, *UNREADABLE) as error:
        raise CheckpointError(f"encoder weights {path}: not a readable checkpoint ({_first_line(error)})") from None


def _encoder_part(encoder: nn.Module, state: Any, source: str) -> dict[str, torch.Tensor]:
    """`state` without the classifier, once it is known to hold every tensor of `encoder` at its shape
    and nothing else; a CheckpointError naming what is missing, extra or of another shape."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"encoder weights {source}: not a state dict (a mapping of names to tensors)")
    given = {key: value for key, value in state.items() if not key.startswith(encoder.classifier_prefix)}
    own = encoder.state_dict()
    # Batch norm's step counter is not a weight, and older torchvision files lack it.
    missing = [key for key in own if key not in given and not key.endswith("num_batches_tracked")]
    extra = [key for key in given if key not in own]
    reshaped = [f"{key} {tuple(value.shape)} for {tuple(own[key].shape)}" for key, value in given.items()
                if key in own and value.shape != own[key].shape]
    problems = [f"{len(keys)} {what} ({_few(keys)})" for what, keys in
                (("missing", missing), ("unexpected", extra), ("of another shape", reshaped)) if keys]
    if problems:
        raise CheckpointError(f"encoder weights {source}: not torchvision's {encoder.arch} layout: "
                              f"{'; '.join(problems)}")
    return given


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (", ..." if len(keys) > SHOWN else "")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else type(error).__name__
