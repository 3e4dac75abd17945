"""One typed configuration for a run, with named presets.

A preset is a complete, tested set of choices (model, input size, optimiser, batch, epochs);
command-line flags override single fields of it. `Config` is plain data: it is saved inside every
checkpoint (as a dict of primitives) so that `--resume` and `predict` rebuild the same model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carvana.errors import ConfigError
from carvana.geometry import MODEL_NAMES, UNET1024, UNET_ORIGINAL, Size, model_geometry

OPTIMIZERS = ("sgd", "rmsprop", "adam")
SCHEDULERS = ("plateau", "cosine", "none")
AMP_MODES = ("auto", "off", "fp16", "bf16")


@dataclass(frozen=True)
class Config:
    preset: str = "cpu"
    # Model
    model: str = UNET1024
    input_size: Size = Size(384, 256)
    width: float = 1.0  # channel multiplier; < 1 gives a slimmer net of the same shape
    # Optimisation
    optimizer: str = "rmsprop"
    lr: float = 2e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "plateau"
    batch_size: int = 2
    epochs: int = 50
    grad_clip: float | None = None  # max gradient norm; None = no clipping
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    amp: str = "auto"  # auto: fp16/bf16 autocast on CUDA, bf16 on CPUs that have it, else off
    channels_last: bool = True
    early_stopping_patience: int | None = None
    # Data
    data_dir: Path = Path("input")
    output_dir: Path = Path("output")
    log_dir: Path = Path("logs")
    validation_size: float = 0.2
    sample_size: float = 1.0  # fraction of the cars to use
    augment: bool = True
    seed: int = 42
    workers: int = 2
    device: str = "auto"
    # Prediction
    threshold: float = 0.5
    tta: bool = False  # horizontal-flip test-time augmentation
    run_name: str | None = None

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ConfigError(f"model {self.model!r}: unknown (choose from {', '.join(MODEL_NAMES)})")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler {self.scheduler!r}: choose from {', '.join(SCHEDULERS)}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp {self.amp!r}: choose from {', '.join(AMP_MODES)}")
        if not 0.0 < self.validation_size < 1.0:
            raise ConfigError(f"validation size {self.validation_size}: must be between 0 and 1")
        if not 0.0 < self.sample_size <= 1.0:
            raise ConfigError(f"sample size {self.sample_size}: must be in (0, 1]")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold {self.threshold}: must be between 0 and 1")
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', ' ')} {getattr(self, name)}: must be at least 1")
        if self.width <= 0:
            raise ConfigError(f"width {self.width}: must be positive")
        model_geometry(self.model, self.input_size)  # raises a ConfigError naming valid sizes

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
            if key not in known:
                continue  # a field from another version of the tool
            if key == "input_size":
                value = Size(*value)
            elif key in ("data_dir", "output_dir", "log_dir"):
                value = Path(value)
            kwargs[key] = value
        return cls(**kwargs)


PRESETS: dict[str, Config] = {
    # The paper's network as the seed trained it: 572 in, 388 out, SGD with high momentum.
    "unet_original": Config(
        preset="unet_original", model=UNET_ORIGINAL, input_size=Size(572, 572), optimizer="sgd",
        lr=0.01, momentum=0.99, batch_size=3, epochs=50,
    ),
    # The seed's 0.995 setup: UNet1024 at 1024x1024 with RMSprop 2e-4.
    "unet1024": Config(
        preset="unet1024", model=UNET1024, input_size=Size(1024, 1024), optimizer="rmsprop",
        lr=2e-4, batch_size=2, epochs=50,
    ),
    # Default without CUDA: a slim UNet1024 at a small 3:2 size that trains on the built-in sample
    # within minutes on two cores.
    "cpu": Config(
        preset="cpu", model=UNET1024, input_size=Size(192, 128), width=0.25, optimizer="adam",
        lr=2e-3, batch_size=8, epochs=20, scheduler="cosine",
    ),
}


def preset(name: str) -> Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"preset {name!r}: unknown (choose from {', '.join(PRESETS)})") from None
