"""Torch datasets and loaders: files on disk -> tensors the U-Nets take, in the model's geometry.

Photos and masks are resized to the covered size, augmented there (cheaper, and the padding derived
afterwards keeps the mask on the input's centre), then padded to the input (`carvana.data.model_input`).
Targets are a 0/1 mask or, with `soft_targets`, the car's share of each pixel, so a net can place an
edge inside a covered-size pixel. The decoded cache, when given, replaces reading the files. Photos
leave as uint8 (3, H, W); the forward pass normalises them on the batch's device.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, get_worker_info

from carvana.core import distributed
from carvana.core.errors import ConfigError
from carvana.core.geometry import Geometry, Size
from carvana.data.augment import Augmenter
from carvana.data.cache import DecodedCache, OpenedCache, open_decoded_cache
from carvana.data.images import load_image, load_mask, load_mask_fractions, mask_from_fractions
from carvana.data.layout import CarvanaData
from carvana.data.loading import CarvanaLoader, ShardSampler, load_or_failure, make_loader
from carvana.data.model_input import photo_input, random_crop

CACHE_DIR_NAME = "cache"  # under the output dir


class LoaderSettings(Protocol):
    """The settings the loaders read from a run's config (`carvana.run.config.Config` has them all)."""

    batch_size: int
    workers: int
    seed: int
    augment: bool
    soft_targets: bool
    cache: bool
    output_dir: Path
    crop: Size | None


class CarvanaTrainDataset(Dataset):
    """(image (3, H_in, W_in) uint8, mask (1, H, W) float32 0/1) pairs, the mask at the covered size.

    `soft_targets`: the mask is the car's share of each pixel in [0, 1]. `cache`: pairs read from the
    decoded cache. `crop` (--crop): a random crop-sized window of photo and mask, mirror-padded to the
    geometry's input. Augmentation draws from a numpy Generator seeded in each loader worker from its
    torch seed (itself from the loader's seeded generator), so workers and epochs differ and a run repeats
    given `seed`; seeding from (index, epoch) would not reach persistent workers.
    """

    def __init__(
        self,
        image_paths: Sequence[Path],
        mask_paths: Sequence[Path],
        geometry: Geometry,
        augment: Augmenter | None = None,
        seed: int = 42,
        *,
        soft_targets: bool = False,
        cache: DecodedCache | None = None,
        crop: Size | None = None,
    ):
        if len(image_paths) != len(mask_paths):
            raise ValueError(f"{len(image_paths)} images but {len(mask_paths)} masks")
        self.image_paths = [Path(p) for p in image_paths]
        self.mask_paths = [Path(p) for p in mask_paths]
        self.geometry = geometry
        self.augment = augment
        self.seed = seed
        self.soft_targets = soft_targets
        if cache is not None and cache.size != geometry.covered_size:
            raise ValueError(f"the decoded cache {cache.path} is at {cache.size}, not the covered size "
                             f"{geometry.covered_size}")
        self.cache = cache
        if crop is not None and geometry.border:
            raise ConfigError(f"crop {crop}: {geometry.model} is not a same-size net")
        self.crop = crop
        self._cache_rows = cache.rows(self.image_paths) if cache is not None else None
        self._rng: np.random.Generator | None = None
        self._rng_owner: tuple[int, int | None] | None = None

    def __len__(self) -> int:
        return len(self.image_paths)

    def rng(self) -> np.random.Generator:
        """This process's augmentation generator (made on first use; never shared across workers)."""
        info = get_worker_info()
        owner = (os.getpid(), None if info is None else info.id)
        if self._rng is None or self._rng_owner != owner:
            entropy = [self.seed] if info is None else [self.seed, info.seed, info.id]
            self._rng = np.random.default_rng(entropy)
            self._rng_owner = owner
        return self._rng

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The photo (RGB uint8) and mask of item `index`, at the covered size, unaugmented.

        The mask is uint8 0/1, or with `soft_targets` the car's share of each pixel as 0..255.
        """
        if self.cache is not None and self._cache_rows is not None:
            image, fractions = self.cache.pair(self._cache_rows[index])
            return image, fractions if self.soft_targets else mask_from_fractions(fractions)
        size = self.geometry.covered_size
        image, original = load_image(self.image_paths[index], size)
        load = load_mask_fractions if self.soft_targets else load_mask
        return image, load(self.mask_paths[index], size, expected_size=original)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return load_or_failure(self._item, index)

    def _item(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load_pair(index)
        if self.crop is not None:
            image, mask = random_crop(image, mask, self.crop, self.geometry.input_margins, self.rng())
        if self.augment is not None:
            image, mask = self.augment(image, mask, self.rng(), soft_mask=self.soft_targets)
        target = mask.astype(np.float32)[np.newaxis]
        if self.soft_targets:
            target *= np.float32(1.0 / 255.0)
        photo = (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))) if self.crop is not None
                 else photo_input(image, self.geometry))
        return photo, torch.from_numpy(target)

    def __getstate__(self) -> dict:
        # A worker started by pickling must seed its own generator, not inherit the parent's.
        state = self.__dict__.copy()
        state["_rng"] = state["_rng_owner"] = None
        return state


class CarvanaTestDataset(Dataset):
    """(image (3, H_in, W_in) uint8, file name) for prediction.

    Given several geometries (an ensemble of models of different sizes), each item holds one input per
    geometry, in their order: a tuple of images, each the very input that geometry's model alone
    would get.
    """

    def __init__(self, image_paths: Sequence[Path], geometry: Geometry | Sequence[Geometry]):
        self.image_paths = [Path(p) for p in image_paths]
        self._one_input = isinstance(geometry, Geometry)  # items hold an image, not a tuple of them
        self._geometries = (geometry,) if isinstance(geometry, Geometry) else tuple(geometry)
        if not self._geometries:
            raise ValueError("a test dataset needs at least one geometry")

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | tuple[torch.Tensor, ...], str]:
        return load_or_failure(self._item, index)

    def _item(self, index: int) -> tuple[torch.Tensor | tuple[torch.Tensor, ...], str]:
        path = self.image_paths[index]
        inputs = tuple(photo_input(load_image(path, geometry.covered_size)[0], geometry)
                       for geometry in self._geometries)
        return (inputs[0] if self._one_input else inputs), path.name


def _setting(name: str, given: Any, config: LoaderSettings | None) -> Any:
    if given is not None:
        return given
    if config is None:
        raise TypeError(f"pass {name}= or a config")
    return getattr(config, name)


def make_train_loader(
    data: CarvanaData,
    image_names: Sequence[str],
    geometry: Geometry,
    config: LoaderSettings | None = None,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    seed: int | None = None,
    augment: Augmenter | bool | None = None,
    pin_memory: bool | None = None,
    drop_last: bool = False,
    soft_targets: bool | None = None,
    cache: DecodedCache | None = None,
    crop: Size | None = None,
) -> CarvanaLoader:
    """Shuffled, augmented batches of (images, masks) of the training photos `image_names`.

    Settings not given come from `config` (batch_size, workers, seed, soft_targets, crop, augment: a
    default `Augmenter()` when `config.augment`); without a config, `augment` defaults to none and
    targets are 0/1. `cache`: a decoded cache holding these photos (see `open_training_cache`).
    `crop`: train on random windows of this size of the photos padded to `geometry`'s input.
    Under torchrun each rank gets its share of every epoch's shuffle (a DistributedSampler, moved on
    each epoch by its `set_epoch`).
    """
    if augment is None:
        augment = config is not None and config.augment
    augmenter = Augmenter() if augment is True else (augment or None)
    if seed is None:
        seed = config.seed if config is not None else 42
    names = list(image_names)
    dataset = CarvanaTrainDataset(data.train_image_paths(names), data.mask_paths(names), geometry, augmenter, seed,
                                  soft_targets=_soft_targets(soft_targets, config), cache=cache,
                                  crop=crop if crop is not None or config is None else config.crop)
    ranks = distributed.current()
    sampler = DistributedSampler(dataset, num_replicas=ranks.world_size, rank=ranks.rank, shuffle=True, seed=seed,
                                 drop_last=drop_last) if ranks.distributed else None
    return make_loader(
        dataset,
        batch_size=_setting("batch_size", batch_size, config),
        workers=_setting("workers", workers, config),
        shuffle=True,
        seed=seed,
        pin_memory=pin_memory,
        drop_last=drop_last,
        sampler=sampler,
    )


def make_valid_loader(
    data: CarvanaData,
    image_names: Sequence[str],
    geometry: Geometry,
    config: LoaderSettings | None = None,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    pin_memory: bool | None = None,
    soft_targets: bool | None = None,
    cache: DecodedCache | None = None,
    shard: bool = False,
) -> CarvanaLoader:
    """Batches of (images, masks) of the validation photos `image_names`, in order, never augmented.

    Targets are of the training loader's kind (`soft_targets`, from `config` if not given), so the
    validation loss compares with the training loss. `shard`: under torchrun, only this rank's share
    (`ShardSampler`).
    """
    names = list(image_names)
    dataset = CarvanaTrainDataset(data.train_image_paths(names), data.mask_paths(names), geometry,
                                  soft_targets=_soft_targets(soft_targets, config), cache=cache)
    return make_loader(
        dataset,
        batch_size=_setting("batch_size", batch_size, config),
        workers=_setting("workers", workers, config),
        shuffle=False,
        seed=0,
        pin_memory=pin_memory,
        sampler=ShardSampler(len(dataset)) if shard else None,
    )


def _soft_targets(given: bool | None, config: LoaderSettings | None) -> bool:
    if given is not None:
        return given
    return config is not None and config.soft_targets


def open_training_cache(data: CarvanaData, image_names: Sequence[str], geometry: Geometry,
                        config: LoaderSettings) -> OpenedCache:
    """The decoded cache of a run's training and validation photos `image_names`, at the covered size.

    Under `config.output_dir`/cache, built with `config.workers` processes; (None, "") with
    `config.cache` off; (None, a note saying why) when it is skipped. The rows are in name order, so
    every split of the same photos (a fold run's folds, a resumed run) shares one cache.
    """
    if not config.cache:
        return OpenedCache(None, "")
    names = sorted(set(image_names))
    return open_decoded_cache(data.train_image_paths(names), data.mask_paths(names), geometry.covered_size,
                              Path(config.output_dir) / CACHE_DIR_NAME, config.workers)


def make_test_loader(
    photos: CarvanaData | Sequence[Path],
    geometry: Geometry | Sequence[Geometry],
    config: LoaderSettings | None = None,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    image_names: Sequence[str] | None = None,
    pin_memory: bool | None = None,
    shard: bool = False,
) -> CarvanaLoader:
    """Batches of (images, file names) for prediction, in order.

    `photos` is a CarvanaData (its test photos in sample_submission.csv order, or `image_names`
    of them) or any list of photo paths (e.g. validation photos, to score a model the way Kaggle
    would). `shard`: under torchrun, only this rank's share (`ShardSampler`). Several geometries: each
    batch's images are a tuple of batches, one per geometry (`CarvanaTestDataset`).
    """
    if isinstance(photos, CarvanaData):
        paths = photos.test_image_paths(None if image_names is None else list(image_names))
    else:
        paths = [Path(p) for p in photos]
    return make_loader(
        CarvanaTestDataset(paths, geometry),
        batch_size=_setting("batch_size", batch_size, config),
        workers=_setting("workers", workers, config),
        shuffle=False,
        seed=0,
        pin_memory=pin_memory,
        sampler=ShardSampler(len(paths)) if shard else None,
    )
