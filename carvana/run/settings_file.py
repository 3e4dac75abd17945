"""A run's settings as YAML: `config.yaml` in every run folder, and `--config FILE` to start from one.

A flat mapping named as the `Config` fields or their flags (`input_size` or `input-size`); values are
YAML's own or a flag's text (`max_time: 1h30m`) and get the flags' checks; explicit flags override the
file. PyYAML's safe loader and dumper; the file is read as untrusted input (at most 64 KiB, no anchors,
aliases or deep nesting), so whatever it holds ends in one `ConfigError` naming the file and key.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from carvana.core.atomic import atomic_write_bytes
from carvana.core.errors import ConfigError
from carvana.core.geometry import Size
from carvana.run.config import ENVIRONMENT_FIELDS, LEGACY_CHANNELS_LAST, Config, memory_format_of
from carvana.run.fields import FIELDS, SHOWN_LENGTH, cut, shown
from carvana.run.flags import FLAGS

CONFIG_FILE_NAME = "config.yaml"
MAX_FILE_BYTES = 64 * 1024  # a run's config.yaml is about 2 KB
# One mapping (depth 1) whose values may be a [width, height] list (depth 2): anything deeper, and any
# anchor or alias (a "billion laughs" file expands a few hundred bytes into gigabytes), is refused
# before PyYAML's recursive composer runs.
MAX_NESTING = 2
UNKNOWN_SHOWN = 5  # unknown keys a message names

# Settings a file cannot set: the run's name comes from its folder or --run-name, not from a file a
# second run would be started from.
NOT_IN_FILE = ("run_name",)


def _key_names() -> dict[str, str]:
    """Every key a file may use -> the Config field it sets (NOT_IN_FILE left out)."""
    names = {name: name for name in FIELDS}
    names[LEGACY_CHANNELS_LAST] = "memory_format"  # files written before memory_format: true/false
    for flag in FLAGS:
        if flag.switch is None:  # `--no-augment` is `augment: false` in a file
            spelled = flag.name.lstrip("-")
            names.setdefault(spelled, flag.field)
            names.setdefault(spelled.replace("-", "_"), flag.field)
    return {name: field for name, field in names.items() if field not in NOT_IN_FILE}


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

    ConfigError in one line naming the file: unreadable, too large, not YAML, anchors or nesting, not a
    mapping, unknown keys (named), or a value its setting cannot take (named, quoted short).
    """
    path = Path(path)
    data = _parse_yaml(_read_text(path), path)
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected settings as `name: value` lines, found a {type(data).__name__}")
    return settings_from_mapping(data, path)


def _read_text(path: Path) -> str:
    """The file's text, refused unread beyond MAX_FILE_BYTES."""
    if path.exists() and not path.is_file():  # a FIFO or a device would wait for input, or never end
        raise ConfigError(f"{path}: not a regular file (a settings file is YAML text on disk)")
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
            length = os.fstat(file.fileno()).st_size
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such settings file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
    if len(raw) > MAX_FILE_BYTES:
        found = f"{length:,} bytes" if length > MAX_FILE_BYTES else f"over {MAX_FILE_BYTES:,} bytes"
        raise ConfigError(f"{path}: {found}, too large for a settings file (at most {MAX_FILE_BYTES // 1024} KiB; "
                          "a run's config.yaml is about 2 KB)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot be read as text (not UTF-8 at byte {e.start})") from None


def _parse_yaml(text: str, path: Path) -> Any:
    """The YAML of `text`, its events checked (`_check_events`) before the safe loader builds anything."""
    try:
        _check_events(yaml.parse(text, Loader=yaml.SafeLoader), path)
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({where}{cut(problem)})") from None
    except (ValueError, OverflowError) as e:  # a scalar PyYAML cannot convert: an int of 5,000 digits, 2021-02-30
        raise ConfigError(f"{path}: a value YAML cannot convert ({cut(str(e).split(':')[0])})") from None


def _check_events(events: Iterable[yaml.Event], path: Path) -> None:
    """Refuse anchors, aliases and nesting beyond MAX_NESTING, one parser event at a time (PyYAML's parser
    is a state machine, so a deep file cannot exhaust the stack here, and nothing is expanded)."""
    depth, keys, next_is_key = 0, set(), True  # the top mapping's keys so far; whether a key comes next
    for event in events:
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ConfigError(f"{path}: line {line}: anchors and aliases (&name, *name) are not taken in a "
                              "settings file; write each value out")
        if depth == 1 and isinstance(event, yaml.ScalarEvent):
            if next_is_key:
                if event.value in keys:  # PyYAML would keep the last one without a word
                    raise ConfigError(f"{path}: line {line}: {cut(event.value)} is set twice")
                keys.add(event.value)
            next_is_key = not next_is_key
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                raise ConfigError(f"{path}: line {line}: nested too deep for a settings file (`name: value` "
                                  "lines; a size may be [width, height])")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            if depth == 1:  # a [width, height] value has ended: a key comes next
                next_is_key = True


def settings_from_mapping(data: Mapping[Any, Any], path: Path) -> dict[str, Any]:
    """Config fields -> checked values from a mapping read out of the file at `path` (for messages)."""
    names = _key_names()
    unknown = [key for key in data if not isinstance(key, str) or key not in names]
    if unknown:
        listed = ", ".join(key if _plain_key(key) else shown(key) for key in unknown[:UNKNOWN_SHOWN])
        more = f" and {len(unknown) - UNKNOWN_SHOWN} more" if len(unknown) > UNKNOWN_SHOWN else ""
        raise ConfigError(f"{path}: unknown setting{'s' if len(unknown) > 1 else ''} {listed}{more} "
                          f"(the keys are the settings' names, e.g. lr, input_size, epochs)")
    settings: dict[str, Any] = {}
    keys: dict[str, str] = {}  # field -> the key that set it
    for key, value in data.items():
        field = names[key]
        if field in keys:
            raise ConfigError(f"{path}: {field} is set twice (as {keys[field]} and as {key})")
        keys[field] = key
        try:
            legacy = key == LEGACY_CHANNELS_LAST  # memory_format's setting of old, true or false
            settings[field] = memory_format_of(value) if legacy else FIELDS[field].check(value, text=True)
        except (argparse.ArgumentTypeError, ConfigError) as e:
            raise ConfigError(f"{path}: {key}: {e}") from None
    return settings  # checked with the rest of the settings by Config itself


def _plain_key(key: Any) -> bool:
    """A key a message may show as it is: short, printable, no spaces."""
    return isinstance(key, str) and 0 < len(key) <= SHOWN_LENGTH and key.isprintable() and " " not in key

