"""Tiny synthetic segmentation data and configs for the training tests (CPU, a few seconds)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from carvana.core.geometry import Size
from carvana.run.config import Config

SIDE = 64


def ellipse_masks(count: int, side: int = SIDE, seed: int = 0) -> torch.Tensor:
    """(N, 1, side, side) float 0/1 masks of random filled ellipses (a car-sized blob each)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    masks = []
    for _ in range(count):
        cy, cx = (torch.rand(2, generator=g) * 0.4 + 0.3) * side
        ry, rx = (torch.rand(2, generator=g) * 0.2 + 0.15) * side
        masks.append((((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0).float())
    return torch.stack(masks).unsqueeze(1)


def ellipse_dataset(count: int = 8, side: int = SIDE, border: int = 0, seed: int = 0) -> TensorDataset:
    """(image, mask) pairs: the image is the mask as a uint8 3-channel photo (bright car, dark background)
    plus noise, as the loaders ship photos.

    With `border`, the image is padded (edge-replicated) like the valid-convolution U-Net's input.
    """
    masks = ellipse_masks(count, side, seed)
    g = torch.Generator().manual_seed(seed + 1)
    images = (masks * 160.0 + 48.0).repeat(1, 3, 1, 1) + 40.0 * torch.randn(count, 3, side, side, generator=g)
    if border:
        images = torch.nn.functional.pad(images, (border,) * 4, mode="replicate")
    return TensorDataset(images.round().clamp(0, 255).to(torch.uint8), masks)


def loaders(count: int = 8, batch_size: int = 4, border: int = 0, side: int = SIDE) -> tuple[DataLoader, DataLoader]:
    """A shuffled training loader and an in-order validation loader over the same tiny set."""
    data = ellipse_dataset(count, side, border)
    return DataLoader(data, batch_size=batch_size, shuffle=True), DataLoader(data, batch_size=batch_size)


def tiny_config(tmp_path: Path | None = None, **changes) -> Config:
    """A slim UNet1024 at 64x64 on the CPU in fp32, channels_last (not timed): fast and deterministic."""
    base = Config(
        preset="cpu", model="unet1024", input_size=Size(SIDE, SIDE), width=0.125, optimizer="adam",
        lr=3e-3, scheduler="none", batch_size=4, epochs=3, amp="off", memory_format="channels_last", device="cpu",
        seed=0, run_name="tiny",
    )
    if tmp_path is not None:
        base = base.replace(output_dir=tmp_path / "output", log_dir=tmp_path / "logs")
    return base.replace(**changes)


class InterruptingLoader:
    """Wraps a loader; raises `error` when asked for batch number `at` (counted over all epochs)."""

    def __init__(self, loader: DataLoader, at: int, error: BaseException = KeyboardInterrupt()):
        self.loader, self.at, self.error = loader, at, error
        self.dataset = loader.dataset
        self.batches = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            self.batches += 1
            if self.batches == self.at:
                raise self.error
            yield batch


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def scalar_events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def image_events(run_dir: Path) -> dict[str, list[int]]:
    """image tag -> [steps]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}


def image_summaries(run_dir: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """image tag -> [(step, the picture decoded to RGB uint8 (H, W, 3))]."""
    import cv2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    acc.Reload()
    decoded = {}
    for tag in acc.Tags()["images"]:
        decoded[tag] = []
        for event in acc.Images(tag):
            bgr = cv2.imdecode(np.frombuffer(event.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
            assert bgr.shape[:2] == (event.height, event.width), f"{tag}: stored size disagrees with the picture"
            decoded[tag].append((event.step, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return decoded


def text_summaries(run_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """text tag (as given to add_text) -> [(step, text)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    suffix = "/text_summary"  # what torch's add_text appends to the tag
    return {tag.removesuffix(suffix): [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"] if tag.endswith(suffix)}
