"""The train/validation split keeps all views of a car on one side."""
from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carvana.core.errors import ConfigError
from carvana.data.split import split_by_car
from carvana.kaggle.files import car_id


def photos(cars: list[str], views: int = 16) -> list[str]:
    return [f"{car}_{view:02d}.jpg" for car in cars for view in range(1, views + 1)]


def car_list(count: int) -> list[str]:
    return [f"{i:012x}" for i in range(count)]


car_ids = st.lists(st.text("0123456789abcdef", min_size=12, max_size=12), min_size=2, max_size=40, unique=True)


@given(
    cars=car_ids,
    views=st.integers(1, 16),
    validation_size=st.floats(0.05, 0.95),
    sample_size=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**31),
)
def test_no_car_is_on_both_sides_and_each_side_has_one(cars, views, validation_size, sample_size, seed) -> None:
    split = split_by_car(photos(cars, views), validation_size, sample_size, seed)
    train_cars = {car_id(n) for n in split.train}
    valid_cars = {car_id(n) for n in split.valid}
    assert train_cars and valid_cars
    assert not train_cars & valid_cars
    # Every view of a kept car comes along with it.
    for car in train_cars | valid_cars:
        side = split.train if car in train_cars else split.valid
        assert sum(car_id(n) == car for n in side) == views
    assert not set(split.train) & set(split.valid)


def test_all_photos_are_used_with_the_full_sample_and_the_validation_share_is_about_right() -> None:
    names = photos(car_list(50))
    split = split_by_car(names, validation_size=0.2)
    assert sorted(split.train + split.valid) == sorted(names)
    assert len(split.valid_cars) == 10 and len(split.train_cars) == 40


def test_the_split_depends_only_on_the_seed_not_the_order_of_names() -> None:
    names = photos(car_list(30), views=4)
    shuffled = names[:]
    random.Random(1).shuffle(shuffled)
    assert split_by_car(names, seed=7) == split_by_car(shuffled, seed=7)
    assert split_by_car(names, seed=7) != split_by_car(names, seed=8)


def test_sample_size_keeps_that_fraction_of_the_cars_reproducibly() -> None:
    names = photos(car_list(40), views=2)
    half = split_by_car(names, sample_size=0.5, seed=3)
    assert len(half.train_cars) + len(half.valid_cars) == 20
    assert len(half.train) + len(half.valid) == 40
    assert split_by_car(names, sample_size=0.5, seed=3) == half
    other = split_by_car(names, sample_size=0.5, seed=4)
    assert set(other.train_cars + other.valid_cars) != set(half.train_cars + half.valid_cars)


def test_tiny_datasets_still_get_one_car_on_each_side() -> None:
    split = split_by_car(photos(car_list(2)), validation_size=0.2, sample_size=0.1)
    assert len(split.train_cars) == 1 and len(split.valid_cars) == 1


@pytest.mark.parametrize(
    ("names", "kwargs", "words"),
    [
        (photos(car_list(1)), {}, "at least 2 cars"),
        ([], {}, "at least 2 cars"),
        (photos(car_list(5)), {"validation_size": 0.0}, "validation size"),
        (photos(car_list(5)), {"validation_size": 1.0}, "validation size"),
        (photos(car_list(5)), {"sample_size": 0.0}, "sample size"),
        (photos(car_list(5)), {"sample_size": 1.5}, "sample size"),
        (photos(car_list(5)), {"seed": -1}, "seed"),
    ],
)
def test_settings_that_cannot_split_raise_config_errors(names, kwargs, words) -> None:
    with pytest.raises(ConfigError, match=words):
        split_by_car(names, **kwargs)
