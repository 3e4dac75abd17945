"""`ForwardPass`: a model on its device, in its number format and memory layout, from photos to logits.

The one place where a batch is moved to the device, normalised, laid out and run through the model.
Training (the classifier) and prediction (the Predictor) both go through it, so they cannot
disagree on how a photo becomes the model's input.

Loaders ship the photos as uint8 (a quarter of the bytes of float32 to decode, pickle, pin and
copy); they are normalised here, on the batch's device: pixel / 255, then the ImageNet mean and
standard deviation per channel (the statistics pretrained encoders expect; for a net trained from
scratch they simply centre the data).
"""
from __future__ import annotations

import torch
from torch import nn

from carvana.core.device import Precision, select_device, to_memory_format
from carvana.core.geometry import Geometry, Size
from carvana.models.fastest_layout import Layout, choose_layout

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# x_normalised = x_uint8 * _SCALE + _OFFSET  ==  (x / 255 - mean) / std, in one multiply-add.
_SCALE = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD]).reshape(1, 3, 1, 1)
_OFFSET = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).reshape(1, 3, 1, 1)


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) pixels -> float32 normalised model input, on the tensor's device."""
    if images.dtype != torch.uint8:
        raise TypeError(f"photos must come as uint8 pixels, not {images.dtype}")
    return images.float().mul_(_SCALE.to(images.device)).add_(_OFFSET.to(images.device))


class ForwardPass:
    """A model ready to run: on `device`, under `precision`'s autocast, optionally channels_last.

    `geometry`: the model's sizes for the photos it predicts; their probabilities are cropped to its
    covered size (the photo inside a padded input, --crop). None: the output as it comes.
    """

    def __init__(self, model: nn.Module, device: torch.device | str, precision: Precision,
                 channels_last: bool = False, geometry: Geometry | None = None, why: str = ""):
        """`model` is moved to `device` (in channels_last memory format when `channels_last`); `why`: how
        the precision and layout were chosen (`layout.describe()` says it)."""
        self.device = torch.device(device)
        self.precision = precision
        self.channels_last = channels_last
        self.layout = Layout(precision, channels_last, why)
        self.geometry = geometry
        memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format)

    @classmethod
    def with_settings(cls, model: nn.Module, device: torch.device | str, amp: str, memory_format: str,
                      geometry: Geometry | None = None, batch_size: int = 1,
                      step_size: Size | None = None) -> "ForwardPass":
        """`model` on `device` (a torch.device, or a name such as "auto", "cpu", "cuda:1"), in the precision
        and memory format that `amp` and `memory_format` force, else in the fastest of them for training
        steps of `batch_size` inputs of `step_size` (default: the geometry's input size) there
        (`carvana.models.fastest_layout`: timed once per machine, then cached)."""
        device = device if isinstance(device, torch.device) else select_device(device)
        size = step_size or (geometry.input_size if geometry is not None else None)
        layout = choose_layout(model, device, amp, memory_format, size, batch_size)
        return cls(model, device, layout.precision, layout.channels_last, geometry, layout.why)

    def with_model(self, model: nn.Module) -> "ForwardPass":
        """The same pass (device, precision, layout, geometry) through another model, e.g. this one wrapped."""
        return ForwardPass(model, self.device, self.precision, self.channels_last, self.geometry, self.layout.why)

    @property
    def input_geometries(self) -> tuple[Geometry, ...]:
        """The geometries a batch's inputs must be made for: the model's (none known without a geometry)."""
        return () if self.geometry is None else (self.geometry,)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """A loader's uint8 batch as the model takes it: on its device, normalised, in its memory format."""
        images = normalize_batch(images.to(self.device, non_blocking=True))
        return to_memory_format(images, self.channels_last)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's output for a batch from `inputs`, under the precision's autocast."""
        with self.precision.autocast():
            return self.model(inputs)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """(B, H, W) float32 probabilities of a uint8 batch, at the covered size of the geometry (the
        model's output size without one), on its device.

        With `tta` the mean of the photo's and its mirror image's probabilities, the latter flipped back.
        """
        self.model.eval()
        inputs = self.inputs(images)
        probabilities = self._probabilities(inputs)
        if tta:
            probabilities = (probabilities + self._probabilities(inputs.flip(-1)).flip(-1)) / 2
        return probabilities if self.geometry is None else self.geometry.crop_output(probabilities)

    def _probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(inputs).float())[:, 0]
