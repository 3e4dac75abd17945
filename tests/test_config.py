"""Presets and flags."""
from __future__ import annotations

import argparse

import pytest

from carvana import cli
from carvana.core.errors import ConfigError
from carvana.core.geometry import Size
from carvana.models.specs import MODEL_NAMES, MODEL_SPECS, model_spec
from carvana.run.config import PRESETS, Config, preset
from carvana.run.fields import FIELDS


def test_presets_are_the_documented_setups():
    assert (preset("unet_original").model, preset("unet_original").input_size) == ("unet_original", Size(572, 572))
    assert (preset("unet_original").optimizer, preset("unet_original").lr, preset("unet_original").momentum) == ("sgd", 0.01, 0.99)
    assert preset("unet_original").batch_size == 3
    assert (preset("unet1024").optimizer, preset("unet1024").lr, preset("unet1024").batch_size) == ("rmsprop", 2e-4, 2)
    assert preset("cpu").width < 1


def test_flags_override_single_fields_and_unset_flags_keep_the_preset():
    c = preset("unet1024").replace(epochs=3, lr=None)
    assert c.epochs == 3 and c.lr == 2e-4 and c.model == "unet1024"


def test_config_round_trips_through_primitives():
    for c in PRESETS.values():
        d = c.to_dict()
        assert all(isinstance(v, (str, int, float, bool, list, type(None))) for v in d.values())
        assert Config.from_dict(d) == c


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"input_size": Size(570, 570), "model": "unet_original"}, "cannot take"),
        ({"validation_size": 1.5}, "validation size"),
        ({"batch_size": 0}, "batch size"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"threshold": 1.0}, "threshold"),
    ],
)
def test_impossible_settings_are_refused(changes, problem):
    with pytest.raises(ConfigError, match=problem):
        preset("cpu").replace(**changes)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="choose from"):
        preset("gpu9000")


def _model_choices(parser: argparse.ArgumentParser) -> list[tuple[str, ...]]:
    """The choices of every --model flag in `parser` and its subcommands."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                found += _model_choices(subparser)
        elif "--model" in action.option_strings:
            found.append(tuple(action.choices))
    return found


def test_every_preset_model_has_a_spec_and_the_cli_offers_exactly_the_specs():
    for config in PRESETS.values():
        assert model_spec(config.model).name == config.model
    assert MODEL_NAMES == tuple(MODEL_SPECS)
    choices = _model_choices(cli.build_parser())
    assert choices and all(offered == MODEL_NAMES for offered in choices)
    with pytest.raises(ConfigError, match=rf"model 'resnet': unknown \(choose from {', '.join(MODEL_NAMES)}\)"):
        preset("cpu").replace(model="resnet")


def test_the_presets_are_the_ones_the_table_of_fields_offers():
    assert tuple(PRESETS) == FIELDS["preset"].choices
    with pytest.raises(ConfigError, match="preset 'gpu9000'"):
        Config(preset="gpu9000")
