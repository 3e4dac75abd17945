"""Training data loading: images/s the training loader delivers, ours vs the seed's way, same run.

Input: the 32 real 1918x1280 Kaggle JPEGs with synthetic palette-GIF masks (bench/fixtures.py).
For each preset's geometry (cpu 192x128, unet1024 1024x1024, unet_original 388 covered -> 572 input):
- seed's way (reference written here): PIL `Image.open`, PIL LANCZOS (antialiased) resize of the
  photo to the network input and of the mask to the network output, `np.asarray(...) / 255` as
  float32 -> torch tensor, DataLoader with `num_workers=0`;
- ours: `make_train_loader` (OpenCV decode with libjpeg's reduced-size decode, INTER_AREA resize,
  uint8 -> normalised float in one multiply-add), with 0 workers (same single process as the
  seed), with 0 workers plus augmentation, and with 2 workers (the presets' default);
- ours with the decoded cache (carvana.data.cache): the same loader reading the pairs from the
  memory-mapped cache instead of decoding them, with 0 and 2 workers; the cache's one-off build
  time (2 workers) is reported beside it.
Every way is timed over whole passes of the loader (batches of the preset's batch size).
With `--data-dir DIR` (a Kaggle-layout folder with train/, train_masks/, train_masks.csv, e.g. real
1918x1280 photos and their real masks), the cpu preset's loader is also timed over all of DIR's
training photos with and without the cache.
Augmentation alone: ms per image of the default `Augmenter()` on photos and masks already decoded
at the preset's covered size (one OpenCV thread, as in a loader worker), so its cost is not hidden
by the decode.
Target: ours (0 workers, no augmentation) >= 2x the seed's images/s.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import best_of, print_table, record  # noqa: E402
from bench.fixtures import PHOTO_SIZE, make_train_folder  # noqa: E402
from carvana.core.geometry import Geometry  # noqa: E402
from carvana.data.augment import Augmenter  # noqa: E402
from carvana.data.cache import open_decoded_cache  # noqa: E402
from carvana.data.datasets import CarvanaTrainDataset, make_train_loader  # noqa: E402
from carvana.data.layout import CarvanaData, load_carvana_data  # noqa: E402
from carvana.models.specs import model_geometry  # noqa: E402
from carvana.run.config import preset  # noqa: E402

TARGET_SPEEDUP = 2.0
PRESETS = ("cpu", "unet1024", "unet_original")


class SeedWayDataset(Dataset):
    """The seed's loading, as a reference: PIL decode, LANCZOS resize, float / 255 tensors."""

    def __init__(self, image_paths: list[Path], mask_paths: list[Path], geometry: Geometry):
        self.image_paths, self.mask_paths, self.geometry = image_paths, mask_paths, geometry

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        image = Image.open(self.image_paths[index]).resize(tuple(self.geometry.input_size), Image.LANCZOS)
        mask = Image.open(self.mask_paths[index]).resize(tuple(self.geometry.output_size), Image.LANCZOS)
        image_array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        mask_array = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
        return (torch.from_numpy(image_array.transpose(2, 0, 1).copy()),
                torch.from_numpy((mask_array > 0.5).astype(np.float32)).unsqueeze(0))


def _images_per_s(loader, repeat: int) -> float:
    """Best images/s over `repeat` full passes (after one warm-up pass that also starts workers)."""
    count = sum(images.shape[0] for images, _ in loader)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for images, masks in loader:
            pass
        best = min(best, time.perf_counter() - start)
    return count / best


def _augment_ms_per_image(dataset: CarvanaTrainDataset, repeat: int) -> float:
    """Best mean ms per image of `Augmenter()` over the dataset's decoded pairs (after a warm-up pass)."""
    pairs = [dataset.load_pair(index) for index in range(len(dataset))]
    augment, rng = Augmenter(), np.random.default_rng(0)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        def one_pass() -> None:
            for image, mask in pairs:
                augment(image, mask, rng)
        return best_of(one_pass, repeat=max(3, 2 * repeat)) / len(pairs) * 1000.0
    finally:
        cv2.setNumThreads(threads)


def _cached_loaders(data: CarvanaData, names: list[str], geometry: Geometry, batch: int, root: Path
                    ) -> tuple[dict, float]:
    """Loaders reading a decoded cache of `names` built under `root` (0 and 2 workers), and its build seconds."""
    start = time.perf_counter()
    cache, note = open_decoded_cache(data.train_image_paths(names), data.mask_paths(names), geometry.covered_size,
                                     root, workers=2, progress=False)
    seconds = time.perf_counter() - start
    if cache is None:
        raise SystemExit(note)
    return {
        "ours_0w_cache": make_train_loader(data, names, geometry, batch_size=batch, workers=0, pin_memory=False,
                                           cache=cache),
        "ours_2w_cache": make_train_loader(data, names, geometry, batch_size=batch, workers=2, pin_memory=False,
                                           cache=cache),
    }, seconds


def _real_data_rows(data_dir: Path, repeat: int, figures: dict) -> list[list]:
    """The cpu preset's loader over all training photos of `data_dir`, with and without the cache."""
    data = load_carvana_data(data_dir, need_test=False)
    names = list(data.train_names)
    config = preset("cpu")
    geometry = model_geometry(config.model, config.input_size)
    batch = config.batch_size
    loaders = {
        "ours_0w": make_train_loader(data, names, geometry, batch_size=batch, workers=0, pin_memory=False),
        "ours_2w": make_train_loader(data, names, geometry, batch_size=batch, workers=2, pin_memory=False),
    }
    with tempfile.TemporaryDirectory(prefix="bench-loading-cache-") as root:
        cached, build_seconds = _cached_loaders(data, names, geometry, batch, Path(root))
        loaders.update(cached)
        rates = {label: _images_per_s(loader, repeat) for label, loader in loaders.items()}
        del loaders, cached
    figures["real_data_dir"] = str(data_dir)
    figures["real_images"] = len(names)
    figures["real_photo_size"] = str(data.image_size)
    figures["real_cpu_cache_build_s"] = build_seconds
    rows = []
    for label, rate in rates.items():
        figures[f"real_cpu_{label}_images_per_s"] = rate
        rows.append([f"cpu ({data.image_size})", label, rate, rate / rates[label.removesuffix("_cache")]])
    rows.append([f"cpu ({data.image_size})", "cache build, 2 workers (s)", build_seconds, ""])
    return rows


def main(quick: bool = False, data_dir: Path | None = None) -> dict:
    repeat = 1 if quick else 2
    figures: dict = {"target_speedup": TARGET_SPEEDUP}
    table, augment_rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench-loading-") as tmp:
        images, masks = make_train_folder(Path(tmp))
        if quick:
            images, masks = images[:16], masks[:16]
        names = [p.name for p in images]
        data = CarvanaData(data_dir=Path(tmp), image_size=PHOTO_SIZE, train_dir=images[0].parent,
                           masks_dir=masks[0].parent, train_names=names)
        figures["images"] = len(names)
        for name in PRESETS:
            config = preset(name)
            geometry = model_geometry(config.model, config.input_size)
            batch = config.batch_size
            seed_loader = DataLoader(SeedWayDataset(images, masks, geometry), batch_size=batch, num_workers=0)
            ours = {
                "ours_0w": make_train_loader(data, names, geometry, batch_size=batch, workers=0, pin_memory=False),
                "ours_0w_augment": make_train_loader(data, names, geometry, batch_size=batch, workers=0,
                                                     augment=Augmenter(), pin_memory=False),
                "ours_2w": make_train_loader(data, names, geometry, batch_size=batch, workers=2, pin_memory=False),
            }
            cached, build_seconds = _cached_loaders(data, names, geometry, batch, Path(tmp) / "cache")
            ours.update(cached)
            figures[f"{name}_cache_build_s"] = build_seconds
            rates = {"seed_0w": _images_per_s(seed_loader, repeat)}
            rates.update({label: _images_per_s(loader, repeat) for label, loader in ours.items()})
            augment_ms = _augment_ms_per_image(ours["ours_0w"].dataset, repeat)
            del ours, cached  # stops the persistent workers
            figures[f"{name}_augment_ms_per_image"] = augment_ms
            augment_rows.append([name, f"{geometry.covered_size}", augment_ms])
            for label, rate in rates.items():
                figures[f"{name}_{label}_images_per_s"] = rate
                table.append([name, f"{geometry.input_size}", label, rate, rate / rates["seed_0w"]])
            figures[f"{name}_speedup_0w"] = rates["ours_0w"] / rates["seed_0w"]
            figures[f"{name}_pass"] = figures[f"{name}_speedup_0w"] >= TARGET_SPEEDUP
    print_table(
        f"Training loader, {figures['images']} real {PHOTO_SIZE} JPEGs + GIF masks (images/s, higher is better; "
        f"target ours_0w >= {TARGET_SPEEDUP:g}x seed)",
        ["preset", "input", "way", "images/s", "x seed"], table,
    )
    print_table("Augmentation alone, default Augmenter() on decoded pairs, 1 OpenCV thread (ms/image, lower is better)",
                ["preset", "covered size", "ms/image"], augment_rows)
    if data_dir is not None:
        rows = _real_data_rows(data_dir, repeat, figures)
        print_table(f"Training loader on {data_dir}, {figures['real_images']} photos, with and without the decoded "
                    "cache (images/s, higher is better)", ["preset", "way", "images/s", "x uncached"], rows)
    record("training_loading", figures)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 photos, one timed pass")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="also time the cpu preset over this Kaggle-layout folder's training photos")
    arguments = parser.parse_args()
    main(arguments.quick, arguments.data_dir)
