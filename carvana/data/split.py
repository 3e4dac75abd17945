"""Train/validation split by car.

Each Carvana car is photographed from 16 angles on a turntable; two views of one car share the
paint, the wheels and the background. Splitting photo by photo (as well-known public repos do) puts views of the
same car on both sides, and the validation score then measures memory, not generalisation. Here
all views of a car go to one side.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from carvana.core.errors import ConfigError
from carvana.kaggle.files import car_id


@dataclass(frozen=True)
class Split:
    train: list[str]  # photo names, sorted
    valid: list[str]

    @property
    def train_cars(self) -> list[str]:
        return sorted({car_id(n) for n in self.train})

    @property
    def valid_cars(self) -> list[str]:
        return sorted({car_id(n) for n in self.valid})


def split_by_car(
    image_names: Sequence[str],
    validation_size: float = 0.2,
    sample_size: float = 1.0,
    seed: int = 42,
) -> Split:
    """Split photos into train and validation with every car on one side only.

    `sample_size` is the fraction of cars kept (drawn before splitting); `validation_size` the
    fraction of the kept cars that validate. Both are rounded up to whole cars, and each side gets
    at least one car. The result depends only on the set of names and `seed`, not their order.
    """
    if not 0.0 < validation_size < 1.0:
        raise ConfigError(f"validation size {validation_size}: must be between 0 and 1")
    if not 0.0 < sample_size <= 1.0:
        raise ConfigError(f"sample size {sample_size}: must be in (0, 1]")
    if seed < 0:
        raise ConfigError(f"seed {seed}: must be a non-negative integer")
    names = sorted(set(image_names))
    cars = sorted({car_id(n) for n in names})
    if len(cars) < 2:
        raise ConfigError(
            f"{len(names)} training photo(s) of {len(cars)} car(s): need photos of at least 2 cars "
            "(one to train on, one to validate)"
        )
    kept_count = min(len(cars), max(2, math.ceil(sample_size * len(cars) - 1e-9)))
    rng = np.random.default_rng(seed)
    kept = set(rng.choice(np.array(cars), size=kept_count, replace=False).tolist())
    names = [n for n in names if car_id(n) in kept]
    groups = [car_id(n) for n in names]

    valid_cars = min(kept_count - 1, max(1, math.ceil(validation_size * kept_count - 1e-9)))
    splitter = GroupShuffleSplit(
        n_splits=1, test_size=valid_cars, train_size=kept_count - valid_cars, random_state=seed
    )
    train_index, valid_index = next(splitter.split(names, groups=groups))
    return Split(
        train=sorted(names[i] for i in train_index),
        valid=sorted(names[i] for i in valid_index),
    )


def fold_split(image_names: Sequence[str], folds: int, fold: int, sample_size: float = 1.0, seed: int = 42) -> Split:
    """Fold `fold` (1..`folds`) of a K-fold split by car: its cars validate, every other fold's cars train.

    The kept cars (`sample_size`, drawn as `split_by_car` draws them) are shuffled by `seed` and dealt
    to the folds in turn, so fold sizes differ by at most one car and over the K folds every kept car
    validates exactly once. The result depends only on the set of names, `folds` and `seed`.
    """
    if folds < 2:
        raise ConfigError(f"folds {folds}: a K-fold split needs 2 or more")
    if not 1 <= fold <= folds:
        raise ConfigError(f"fold {fold}: must be one of 1..{folds}")
    if not 0.0 < sample_size <= 1.0:
        raise ConfigError(f"sample size {sample_size}: must be in (0, 1]")
    names = sorted(set(image_names))
    cars = sorted({car_id(n) for n in names})
    kept_count = min(len(cars), max(2, math.ceil(sample_size * len(cars) - 1e-9)))
    if kept_count < folds:
        raise ConfigError(f"--folds {folds}: the training photos show {kept_count} car(s) to use; each fold needs "
                          "at least one car to validate on (use fewer folds)")
    rng = np.random.default_rng(seed)
    kept = rng.choice(np.array(cars), size=kept_count, replace=False).tolist()
    order = [kept[i] for i in rng.permutation(len(kept))]
    valid_cars = set(order[fold - 1::folds])
    kept_set = set(kept)
    return Split(
        train=[n for n in names if car_id(n) in kept_set and car_id(n) not in valid_cars],
        valid=[n for n in names if car_id(n) in valid_cars],
    )
