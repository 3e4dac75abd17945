"""Checkpoints: what a file holds, how it is written and how it is read back safely.

A checkpoint holds only tensors and primitives (the config as `Config.to_dict()`), so it loads with
`torch.load(weights_only=True)`: opening a checkpoint never runs code from the file. Every file is a
complete resume point: model, optimiser, scheduler and loss-scaler state, the epoch and step
counters, the best score and the metrics history. `last.pt` always holds the end of an epoch, never
weights from the middle of one, so resuming redoes an interrupted epoch exactly.

Every file also holds a SHA-256 of its weights (names, shapes, dtypes and bytes of `model_state`),
checked when it is loaded: torch's zip reader does not check the archive's CRCs, so bytes changed
inside a tensor (a bad disk, a broken copy) would otherwise load silently and predict garbage.
Files written before the checksum existed load without the check.
"""
from __future__ import annotations

import errno
import hashlib
import math
import os
import pickle
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from carvana.atomic import atomic_path
from carvana.errors import CarvanaError, CheckpointError, ConfigError
from carvana.train.callbacks import PERSIST, Callback, TrainState

FORMAT_VERSION = 1
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
REQUIRED_KEYS = ("format", "model_name", "width", "model_state", "epoch", "global_step", "config")
MODES = ("max", "min")
CHECKSUM_KEY = "model_state_sha256"


def checkpoint_payload(state: TrainState, run_record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to resume `state`, as tensors and primitives only.

    `run_record`: what the run was trained on (data dir, split; see `carvana.runs.RunRecord`), so
    that a resume continues on the same data and split, or says that they changed.
    """
    return {
        "format": FORMAT_VERSION,
        "model_name": state.config.model,
        "width": float(state.config.width),
        "run_name": state.run_name,
        "config": state.config.to_dict(),
        "model_state": state.model.state_dict(),
        "optimizer_state": state.optimizer.state_dict(),
        "scheduler_state": state.scheduler.state_dict() if state.scheduler is not None else None,
        "scaler_state": state.scaler.state_dict() if state.scaler is not None else None,
        "epoch": int(state.epoch),
        "global_step": int(state.global_step),
        "train_seconds": float(state.train_seconds),  # the time budget continues from here on resume
        "epoch_steps": int(state.epoch_steps),
        "best_score": None if state.best_score is None else float(state.best_score),
        "metrics": {k: float(v) for k, v in state.metrics.items()},
        "history": [{k: float(v) for k, v in entry.items()} for entry in state.history],
        "run": run_record,
    }


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


def update_checkpoint(path: Path, entries: Mapping[str, Any]) -> None:
    """Add or replace top-level `entries` (primitives only) of the checkpoint at `path`, atomically.

    For facts learnt about a checkpoint's weights after it was written (the threshold chosen on the
    validation cars); the weights, and so their checksum, are unchanged.
    """
    payload = load_checkpoint(path)
    payload.pop(CHECKSUM_KEY, None)
    save_checkpoint(path, {**payload, **entries})


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
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
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
    if expected_model is not None and payload["model_name"] != expected_model:
        raise CheckpointError(f"{path}: a checkpoint of {payload['model_name']}, not of {expected_model}")
    return payload


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


def _better(score: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if math.isnan(score):
        return False
    if best is None:
        return True
    return score > best + min_delta if mode == "max" else score < best - min_delta


class ModelCheckpoint(Callback):
    """`last.pt` after every epoch, `best.pt` when the monitored metric improves (Lightning/Keras names).

    The best score lives in `TrainState.best_score`, so a resumed run keeps comparing against the
    best of the epochs before the interruption.

    On an interruption (Ctrl-C, diverged loss, error) `last.pt` is left at the last completed epoch:
    it is written only if that epoch's end was not yet saved and the weights are still those of
    that epoch's end (`not state.mid_epoch`), so neither half-trained nor NaN weights are saved,
    and not again if writing it at that epoch's end just failed (a full disk stays full).

    Its hooks run before every other callback's (`order` PERSIST), so an epoch's checkpoint is on
    disk before a logger or another observer of that epoch can fail.
    """

    order = PERSIST

    def __init__(self, dirpath: str | Path, monitor: str = "val_dice", mode: str = "max", save_last: bool = True,
                 run_record: dict[str, Any] | None = None):
        if mode not in MODES:
            raise ConfigError(f"checkpoint mode {mode!r}: choose from {', '.join(MODES)}")
        self.dirpath = Path(dirpath)
        self.monitor = monitor
        self.mode = mode
        self.save_last = save_last
        self.run_record = run_record  # saved in every checkpoint (primitives only)
        self.last_path = self.dirpath / LAST_NAME
        self.best_path = self.dirpath / BEST_NAME
        self._tried_epoch: int | None = None  # the epoch this run last wrote (or tried to write) last.pt for

    def on_train_begin(self, state: TrainState) -> None:
        self._tried_epoch = None

    def on_epoch_end(self, state: TrainState) -> None:
        if self.monitor not in state.metrics:
            raise ConfigError(
                f"checkpoint monitor {self.monitor!r}: not a metric (choose from {', '.join(state.metrics)})"
            )
        # A coarse epoch's score is at the coarse size: best.pt comes from the full-size epochs.
        improved = not state.coarse_epoch and _better(state.metrics[self.monitor], state.best_score, self.mode)
        if improved:
            state.best_score = float(state.metrics[self.monitor])
        payload = checkpoint_payload(state, self.run_record)
        if self.save_last:
            self._write_last(state, payload)
        if improved:
            if self.save_last:  # same content: copy the file rather than serialise again
                with atomic_path(self.best_path) as tmp:
                    shutil.copyfile(self.last_path, tmp)
            else:
                save_checkpoint(self.best_path, payload)

    def on_train_interrupted(self, state: TrainState) -> None:
        if self.save_last and not state.mid_epoch and state.epoch > 0 and self._tried_epoch != state.epoch:
            self._write_last(state, checkpoint_payload(state, self.run_record))

    def _write_last(self, state: TrainState, payload: dict[str, Any]) -> None:
        self._tried_epoch = state.epoch
        save_checkpoint(self.last_path, payload)
        state.last_checkpoint = self.last_path
        state.last_checkpoint_epoch = state.epoch
