"""A run's settings as YAML: `config.yaml` in every run folder, and `--config FILE` to start from one.

The file is a flat mapping of settings, named as the `Config` fields are (`lr`, `input_size`,
`epochs`, ...) or as their flags are without the dashes (`input-size`, `patience`). Values are
YAML's own (numbers, true/false, null) or the text a flag takes (`input_size: 384x256`,
`max_time: 1h30m`), and get the same checks as the flags. A run writes the file it can be started
again from: its recipe first, then where it ran; `python main.py train --config FILE` takes the
file's settings as if they were given as flags, explicit flags overriding them.

PyYAML reads and writes it (safe loader and dumper only: no tags, no objects).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Mapping

import yaml

from carvana.core.atomic import atomic_write_bytes
from carvana.core.errors import ConfigError
from carvana.core.geometry import Size
from carvana.run.config import (ENVIRONMENT_FIELDS, LEGACY_CHANNELS_LAST, PATH_FIELDS, SIZE_FIELDS, Config,
                                 memory_format_of)
from carvana.run.flags import FLAGS, duration, size

CONFIG_FILE_NAME = "config.yaml"

# Settings a file cannot set: the run's name comes from its folder or --run-name, not from a file a
# second run would be started from.
NOT_IN_FILE = ("run_name",)
FIELDS = tuple(f.name for f in dataclasses.fields(Config))


def _key_names() -> dict[str, str]:
    """Every key a file may use -> the Config field it sets."""
    names = {name: name for name in FIELDS}
    names[LEGACY_CHANNELS_LAST] = "memory_format"  # files written before memory_format: true/false
    for flag in FLAGS:
        if flag.switch is None:  # `--no-augment` is `augment: false` in a file
            spelled = flag.name.lstrip("-")
            names.setdefault(spelled, flag.field)
            names.setdefault(spelled.replace("-", "_"), flag.field)
    return names


def settings_yaml(config: Config, title: str = "") -> str:
    """The YAML text of `config`: its recipe, then where it ran (its `Environment`); `title`: a comment line
    on top."""
    values = _plain(config)
    recipe = {name: value for name, value in values.items() if name not in ENVIRONMENT_FIELDS}
    environment = {name: value for name, value in values.items() if name in ENVIRONMENT_FIELDS}
    lines = [f"# {title}" if title else None, "# The recipe: what makes the weights.",
             yaml.safe_dump(recipe, sort_keys=False, default_flow_style=False).rstrip(),
             "# Where it ran: folders, device, loader workers.",
             yaml.safe_dump(environment, sort_keys=False, default_flow_style=False).rstrip()]
    return "\n".join(line for line in lines if line is not None) + "\n"


def _plain(config: Config) -> dict[str, Any]:
    """The fields of `config` as YAML scalars (sizes as WxH text, paths as text), the run's name left out."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        if name in NOT_IN_FILE:
            continue
        value = getattr(config, name)
        out[name] = str(value) if isinstance(value, (Size, Path)) else value
    return out


def write_settings_file(path: Path, config: Config, title: str = "") -> None:
    """`config` as YAML at `path`, written atomically."""
    atomic_write_bytes(path, settings_yaml(config, title).encode("utf-8"))


def read_settings_file(path: Path) -> dict[str, Any]:
    """The settings of a YAML file as Config fields -> values, each checked as its flag would be.

    ConfigError in one line naming the file: unreadable, not YAML, not a mapping, unknown keys (all
    named), or a value its setting cannot take.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such settings file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read as text ({getattr(e, 'strerror', None) or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({where}{problem})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected settings as `name: value` lines, found a {type(data).__name__}")
    return settings_from_mapping(data, path)


def settings_from_mapping(data: Mapping[Any, Any], path: Path) -> dict[str, Any]:
    """Config fields -> checked values from a mapping read out of the file at `path` (for messages)."""
    names = _key_names()
    unknown = [str(key) for key in data if str(key) not in names or names[str(key)] in NOT_IN_FILE]
    if unknown:
        raise ConfigError(f"{path}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                          f"(the keys are the settings' names, e.g. lr, input_size, epochs)")
    settings: dict[str, Any] = {}
    for key, value in data.items():
        field = names[str(key)]
        if field in settings:
            raise ConfigError(f"{path}: {field} is set twice (as {key} and under another name)")
        settings[field] = _value(field, value, path, str(key))
    return settings  # checked with the rest of the settings by Config itself


def _value(field: str, value: Any, path: Path, key: str) -> Any:
    """A YAML value as the field takes it: text through its flag's parser, numbers and booleans as they are."""
    try:
        if key == LEGACY_CHANNELS_LAST:
            if not isinstance(value, bool):
                raise argparse.ArgumentTypeError(f"{value!r}: must be true or false")
            return memory_format_of(value)
        if isinstance(getattr(Config, field, None), bool) and not isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"{value!r}: must be true or false")
        if field in SIZE_FIELDS:
            if value is None and field != "input_size":
                return None
            if isinstance(value, list) and len(value) == 2:
                return Size(int(value[0]), int(value[1]))
            return size(str(value))
        if field in PATH_FIELDS:
            if not isinstance(value, str) or not value:
                raise argparse.ArgumentTypeError(f"{value!r} is not a folder path")
            return Path(value)
        if field == "max_time" and isinstance(value, str):
            return duration(value)
        if isinstance(value, str):
            flag = next((f for f in FLAGS if f.field == field and f.type is not None), None)
            if flag is not None:
                return flag.type(value)
        return value
    except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
        raise ConfigError(f"{path}: {key}: {e}") from None
