"""Checkpoint files: what one must hold, how it is written and how it is read back safely.

A checkpoint holds only tensors and primitives (the run's recipe under `config`, where it ran under
`environment`: see `settings_entries`), so it loads with `torch.load(weights_only=True)`: opening a
checkpoint never runs code from the file. What a training run puts in one, and when, is
`carvana.train.model_checkpoint`; prediction reads the same files. A command reads a file once, as
a `Checkpoint`, and passes that on.

Every file also holds a SHA-256 of its weights (names, shapes, dtypes and bytes of `model_state`),
checked when it is loaded: torch's zip reader does not check the archive's CRCs, so bytes changed
inside a tensor (a bad disk, a broken copy) would otherwise load silently and predict garbage.
Files written before the checksum existed load without the check.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from carvana.core.atomic import atomic_path
from carvana.core.errors import CarvanaError, CheckpointError, ConfigError
from carvana.run.config import ENVIRONMENT_FIELDS, Config, Environment
from carvana.run.identity import RunRecord

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "model_name", "width", "model_state", "epoch", "global_step", "config")
CHECKSUM_KEY = "model_state_sha256"
ENVIRONMENT_KEY = "environment"  # files from before it keep the environment's fields in `config`


def weights_checksum(model_state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors of a state dict: each one's name, shape and dtype, then its bytes.

    Names in sorted order and each tensor made contiguous first, so the value does not depend on
    the dict's order, the device or the memory format (channels-last weights hash like NCHW ones).
    """
    digest = hashlib.sha256()
    for name in sorted(model_state):
        tensor = model_state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` and the checksum of its weights to `path` atomically.

    A crash leaves the previous file, never half of one. torch.save reports a full disk as a
    RuntimeError of its zip writer that never mentions space ("file write failed", "unexpected
    pos"), so a failed save looks at the free space and says so when the file cannot fit.
    """
    payload = {**payload, CHECKSUM_KEY: weights_checksum(payload["model_state"])}
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as error:
            raise _save_failure(path, tmp, payload, error) from None


def _save_failure(path: Path, tmp: Path, payload: Mapping[str, Any], error: RuntimeError) -> CarvanaError:
    needed = _tensor_bytes(payload)
    try:
        stats = os.statvfs(tmp.parent)
        # The partial temporary file is removed next; its space counts as free.
        free = stats.f_bavail * stats.f_frsize + (tmp.stat().st_size if tmp.exists() else 0)
    except OSError:
        free = None
    if free is not None and free < needed:
        return CarvanaError(
            f"{path}: could not be written ({os.strerror(errno.ENOSPC)}: {_megabytes(free)} free in "
            f"{path.parent}, the checkpoint needs about {_megabytes(needed)}); free some space or choose "
            "another --output-dir; nothing was replaced"
        )
    reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return CarvanaError(f"{path}: could not be written ({reason[:160]}); nothing was replaced")


def _tensor_bytes(value: Any) -> int:
    """The bytes of every tensor in a nested payload: about the size of its file."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def load_checkpoint(path: str | Path, expected_model: str | None = None) -> dict[str, Any]:
    """Read a checkpoint (tensors and primitives only) onto the CPU.

    Raises CheckpointError naming the file when it is missing, unreadable, corrupt, not one of ours,
    or (with `expected_model`) a checkpoint of another model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, pickle.UnpicklingError,
            zipfile.BadZipFile) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated: {reason[:160]})") from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path}: not a carvana checkpoint (expected keys {', '.join(REQUIRED_KEYS)})")
    if payload["format"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {payload['format']}, this version reads {FORMAT_VERSION}")
    if CHECKSUM_KEY in payload and payload[CHECKSUM_KEY] != weights_checksum(payload["model_state"]):
        raise CheckpointError(
            f"{path}: checksum mismatch: the file is corrupt (bytes changed since it was written); use another "
            "checkpoint (e.g. best.pt/last.pt)"
        )
    if expected_model is not None:
        check_model(payload, path, expected_model)
    return payload


def check_model(payload: Mapping[str, Any], path: str | Path, expected_model: str) -> None:
    """CheckpointError naming `path` unless the checkpoint `payload` holds weights of `expected_model`."""
    if payload["model_name"] != expected_model:
        raise CheckpointError(f"{path}: a checkpoint of {payload['model_name']}, not of {expected_model}")


def load_model_weights(model: nn.Module, payload: dict[str, Any], path: str | Path) -> None:
    """Copy the checkpoint's weights into `model`; CheckpointError (naming `path`) if they don't fit."""
    state = payload["model_state"]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if wrong_shape:
            k = wrong_shape[0]
            problems.append(
                f"{len(wrong_shape)} tensors of another shape (e.g. {k}: "
                f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model)"
            )
        raise CheckpointError(
            f"{path}: weights of {payload['model_name']} width {payload['width']} do not fit this model: "
            + "; ".join(problems)
        )
    model.load_state_dict(state)


# --------------------------------------------------------------------------- a checkpoint, read once


def settings_entries(config: Config) -> dict[str, Any]:
    """A run's settings as its checkpoints keep them: the recipe under `config`, where it ran apart."""
    return {"config": config.recipe_dict(), ENVIRONMENT_KEY: config.environment.to_dict()}


def _saved_settings(payload: Mapping[str, Any], path: Path) -> tuple[Config, Environment]:
    """(recipe, environment) of a checkpoint; CheckpointError naming it if they cannot work.

    The run name is not part of the recipe (it is `Checkpoint.run_name`), so that a checkpoint of a
    run named before names were checked (e.g. with a '/') still predicts.
    """
    saved = payload["config"] if isinstance(payload.get("config"), dict) else {}
    environment = payload.get(ENVIRONMENT_KEY)
    if not isinstance(environment, dict):
        environment = {name: saved[name] for name in ENVIRONMENT_FIELDS if name in saved}
    recipe = {name: value for name, value in saved.items() if name not in ENVIRONMENT_FIELDS and name != "run_name"}
    try:
        return Config.from_dict(recipe), Environment.from_dict(environment)
    except ConfigError as e:
        raise CheckpointError(f"{path}: its saved settings cannot be used ({e})") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: its saved settings are malformed ({e})") from None


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file, read and checked once: the recipe of its weights, where its run ran, the run's
    record and its saved state.

    `recipe` is the Config of the settings that made the weights (model, input size, optimiser, loss,
    threshold, seed, ...), its environment fields at their defaults; `environment` is where the run
    ran (folders, device, workers). `--resume` continues in both (`run_config`); `predict` takes the
    recipe alone, so a checkpoint from another machine needs none of its paths.
    """

    path: Path
    payload: dict[str, Any]  # the file's entries as read: weights, optimiser state, counters, records
    recipe: Config
    environment: Environment
    run_name: str | None  # None for a checkpoint written before runs had names
    run: RunRecord | None  # the data and split it was trained on; None for one from before runs kept it

    @classmethod
    def load(cls, path: str | Path, expected_model: str | None = None) -> "Checkpoint":
        """Read and check the file at `path` (`load_checkpoint`) and its saved settings.

        CheckpointError naming the file, in one line, when it is missing, corrupt, not one of ours, of
        another format version, of settings that cannot work, or (with `expected_model`) of another model.
        """
        path = Path(path)
        payload = load_checkpoint(path, expected_model)
        recipe, environment = _saved_settings(payload, path)
        name = payload.get("run_name") or (payload["config"].get("run_name") if isinstance(payload["config"], dict)
                                           else None)
        return cls(path, payload, recipe, environment, name if isinstance(name, str) else None,
                   RunRecord.from_payload(payload))

    @classmethod
    def latest(cls, where: str | Path, name: str, missing: str | None = None) -> "Checkpoint":
        """The checkpoint `where` points to: the file itself, the `name` file of a run's folder, or the newest
        `name` file of the run folders in it (e.g. OUTPUT/models).

        `missing`: what the CheckpointError says when a folder has none; given, `where` is a folder of
        runs even when it does not exist yet.
        """
        where = Path(where)
        if where.is_dir() or (missing is not None and not where.exists()):
            own = where / name
            found = [own] if own.is_file() else sorted(where.glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
            if not found:
                raise CheckpointError(f"{where}: {missing or f'no {name} in it or in its run folders'}")
            where = found[-1]
        return cls.load(where)

    @property
    def epoch(self) -> int:
        """The last epoch its weights completed."""
        return int(self.payload["epoch"])

    def run_config(self) -> Config:
        """The run as it was saved: its recipe in its environment, under its name (what `--resume` continues).

        A checkpoint from before runs had names takes its folder's name.
        """
        try:
            return self.recipe.with_environment(self.environment).replace(run_name=self.run_name or
                                                                          self.path.parent.name)
        except ConfigError as e:
            raise CheckpointError(f"{self.path}: its saved settings cannot be used ({e})") from None

    def check_model(self, expected_model: str) -> None:
        """CheckpointError naming the file unless it holds weights of `expected_model`."""
        check_model(self.payload, self.path, expected_model)

    def load_weights_into(self, model: nn.Module) -> None:
        """Copy its weights into `model`; CheckpointError naming the file if they don't fit."""
        load_model_weights(model, self.payload, self.path)

    def updated(self, entries: Mapping[str, Any]) -> "Checkpoint":
        """Add or replace top-level `entries` (primitives only) of the file, atomically; returns it as it is now.

        For facts learnt about its weights after it was written (the threshold chosen on the validation
        cars); the weights, and so their checksum, are unchanged, and the file is not read again.
        """
        payload = {**self.payload, **entries}
        save_checkpoint(self.path, {key: value for key, value in payload.items() if key != CHECKSUM_KEY})
        return dataclasses.replace(self, payload=payload)
