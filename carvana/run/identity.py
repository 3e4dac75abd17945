"""A run's identity: its unique name, its folders and their lock, and the record of its data and split.

`Run` is the one owner of these facts: its name, folders and checkpoint paths (`best.pt`, `last.pt`)
are decided here once and handed on; nothing else names a run or its files.

A run owns two folders, `OUTPUT/models/NAME` (checkpoints) and `LOGS/NAME` (TensorBoard). A new run
reserves them with `mkdir` (which fails when the folder exists, even for a process racing us), so two
runs started in the same second get two names (`-2`, `-3`, ...). While a run writes, it holds a lock
on its models folder; a second process that wants the same run is refused, naming the holder.

A resumed run continues *the same run*: its checkpoint's `RunRecord` says where its data came from and
how it was split (its settings are decided in `carvana.pipeline.settings`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from carvana.core import distributed
from carvana.core.errors import CarvanaError, ConfigError
from carvana.core.geometry import Size
from carvana.core.locks import FolderLock
from carvana.core.text import finished_epochs
from carvana.run.config import Config

LOCK_NAME = ".run.lock"
LAST_NAME = "last.pt"  # after every epoch: where a resume continues (Lightning's and Keras' names)
BEST_NAME = "best.pt"  # the epoch of the best monitored score: what scoring and prediction use


def run_folder(config: Config, run_name: str) -> Path:
    """A run's folder below OUTPUT/models, logs and OUTPUT/validation: its name, and `fold-N` of a fold's model."""
    return Path(run_name) / fold_name(config.fold) if config.fold is not None else Path(run_name)


FOLD_PREFIX = "fold-"  # a fold run's folds are its subfolders fold-1, fold-2, ...
# Beside a fold run's folds: its out-of-fold result (Dice, threshold, the folds' checkpoints).


def fold_name(fold: int) -> str:
    return f"{FOLD_PREFIX}{fold}"


def models_dir(config: Config, run_name: str) -> Path:
    return config.output_dir / "models" / run_folder(config, run_name)


def default_run_name(config: Config) -> str:
    return f"{config.model}-{datetime.now():%Y%m%d-%H%M%S}"


# --------------------------------------------------------------------------- the run's record


@dataclass(frozen=True)
class RunRecord:
    """What a checkpoint remembers about where the run's data came from and how it was split."""

    data_dir: Path  # the folder actually trained on (e.g. input/sample for the built-in sample)
    origin: str  # "local data", "Kaggle", "built-in sample"
    train_cars: list[str] = field(default_factory=list)
    valid_cars: list[str] = field(default_factory=list)
    sample_cars: int | None = None  # the built-in sample's settings, to regenerate it identically
    sample_image_size: Size | None = None
    photo_size: Size | None = None  # of the photos trained on, which prediction compares its photos' shape with

    def to_dict(self) -> dict[str, Any]:
        """Primitives only (checkpoints load with weights_only=True)."""
        return {"data_dir": str(self.data_dir), "origin": self.origin, "train_cars": list(self.train_cars),
                "valid_cars": list(self.valid_cars), "sample_cars": self.sample_cars,
                "sample_image_size": _text(self.sample_image_size), "photo_size": _text(self.photo_size)}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "RunRecord | None":
        """The record of a checkpoint, or None for a checkpoint written before runs kept one."""
        data = payload.get("run")
        if not isinstance(data, dict) or "data_dir" not in data:
            return None
        return cls(data_dir=Path(data["data_dir"]), origin=str(data.get("origin", "local data")),
                   train_cars=[str(c) for c in data.get("train_cars", [])],
                   valid_cars=[str(c) for c in data.get("valid_cars", [])],
                   sample_cars=data.get("sample_cars"), sample_image_size=_size(data.get("sample_image_size")),
                   photo_size=_size(data.get("photo_size")))


def _text(size: Size | None) -> str | None:
    return None if size is None else str(size)


def _size(text: Any) -> Size | None:
    """A size a checkpoint recorded as WxH text; None for none, or for one this version cannot read."""
    try:
        return Size.parse(text) if isinstance(text, str) and text else None
    except ConfigError:
        return None


# --------------------------------------------------------------------------- folders and locks


class Run:
    """A run being trained: its name, folders and checkpoint paths, decided once; locked while in use.

    Made by `reserve_new_run` (a new run) or `open_existing_run` (a resumed one). The pipeline hands
    its name and paths on to the classifier and the callbacks.
    """

    def __init__(self, config: Config, name: str, created: list[Path]):
        """`config`: where the run's folders are (its output and log dirs, and its fold)."""
        self.name = name
        self.models_dir = models_dir(config, name)
        self.folder = run_folder(config, name)  # its folder under OUTPUT/models, logs and OUTPUT/validation
        self.log_dir = config.log_dir / self.folder
        self.validation_dir = config.output_dir / "validation" / self.folder
        self.last_path = self.models_dir / LAST_NAME
        self.best_path = self.models_dir / BEST_NAME
        self._created = created  # folders this process made, removed again if the run never starts
        self._lock = FolderLock(self.models_dir, LOCK_NAME)

    def lock(self) -> None:
        """Hold the run's lock, or refuse in one line naming the process that holds it."""
        try:
            acquired = self._lock.acquire(wait=False)
        except CarvanaError:
            self.forget()
            raise
        if not acquired:
            holder = self._lock.holder()
            self.forget()
            raise ConfigError(f"{self.models_dir}: run {self.name} is in use by another process "
                              f"(pid {holder if holder is not None else 'unknown'}); wait for it to end, "
                              "or choose another --run-name")

    def release(self) -> None:
        self._lock.release()

    def forget(self) -> None:
        """Remove the folders this process reserved, if they are still empty (the run never started)."""
        self._lock.release()
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty, or gone: leave it


def reserve_new_run(config: Config) -> Run:
    """Reserve the folders of a new run and lock them.

    With `--run-name` the name is taken as given: its folders may exist (e.g. after a run that failed
    before its first epoch), but a run of that name with checkpoints (its own, or its folds') is refused,
    as only `--resume` continues a run. Without one, the name is the model and the time, with `-2`, `-3`, ...
    when another run took that name in the same second: both folders must be new.
    """
    if config.run_name is not None:
        run = open_existing_run(config)
        taken = saved_checkpoints(run.models_dir)
        if taken:
            run.forget()
            raise ConfigError(f"{run.models_dir}: run {run.name} already has checkpoints ({taken[0]}); continue it "
                              f"with --resume {run.models_dir}, or choose another --run-name")
        return run
    base = default_run_name(config)
    for number in itertools.count(1):
        name = base if number == 1 else f"{base}-{number}"
        models, logs = models_dir(config, name), config.log_dir / name
        if logs.exists():
            continue
        try:
            models.parent.mkdir(parents=True, exist_ok=True)
            models.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            raise ConfigError(f"{models}: cannot create the run's checkpoint folder ({e.strerror or e})") from None
        try:
            logs.parent.mkdir(parents=True, exist_ok=True)
            logs.mkdir()
        except FileExistsError:
            models.rmdir()
            continue
        except OSError as e:
            models.rmdir()
            raise ConfigError(f"{logs}: cannot create the run's log folder ({e.strerror or e})") from None
        run = Run(config, name, [models, logs])
        run.lock()
        return run
    raise AssertionError("unreachable")


def saved_checkpoints(folder: Path) -> list[Path]:
    """The checkpoints a run's folder holds: its own last.pt/best.pt, or its folds' (a fold run)."""
    names = (LAST_NAME, BEST_NAME)
    return sorted(path for name in names for path in (folder / name, *folder.glob(f"{FOLD_PREFIX}*/{name}"))
                  if path.exists())


def fold_checkpoints(folder: Path, name: str = BEST_NAME) -> list[Path]:
    """The folds' `name` checkpoints when `folder` is a fold run's (it has no checkpoint of its own), in
    fold order; empty for any other folder."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / name).exists():
        return []
    folds = [path for path in folder.glob(f"{FOLD_PREFIX}*/{name}") if path.parent.name[len(FOLD_PREFIX):].isdigit()]
    return sorted(folds, key=lambda path: int(path.parent.name[len(FOLD_PREFIX):]))


def open_existing_run(config: Config) -> Run:
    """The run named `config.run_name` (resumed, or named by --run-name), its folders made where missing; locked."""
    created = _make_missing(models_dir(config, config.run_name), config.log_dir / config.run_name)
    run = Run(config, config.run_name, created)
    run.lock()
    return run


def fold_run(config: Config, name: str, fold: int) -> Run:
    """Fold `fold` of the fold run `name` (whose lock its caller holds): its folders made where missing."""
    config = config.replace(fold=fold, run_name=name)
    if not distributed.is_main():  # under torchrun rank 0 makes the folders and alone writes in them
        return Run(config, name, [])
    created = _make_missing(models_dir(config, name), config.log_dir / run_folder(config, name))
    return Run(config, name, created)


def follow_run(config: Config, name: str) -> Run:
    """The run `name` as a process other than rank 0 of a torchrun sees it: its names and paths, none of
    its folders made or locked (rank 0 reserved them and alone writes in them)."""
    return Run(config, name, [])


def _make_missing(*folders: Path) -> list[Path]:
    created = []
    for folder in folders:
        if folder.is_dir():
            continue
        try:
            folder.mkdir(parents=True)
            created.append(folder)
        except FileExistsError:
            pass
        except OSError as e:
            raise ConfigError(f"{folder}: cannot create this folder ({e.strerror or e})") from None
    return created


def finished_message(run_name: str, epoch: int, saved_epochs: int, wanted_epochs: int) -> str:
    """What to say when a resumed run has nothing left to train."""
    if epoch >= saved_epochs and wanted_epochs == saved_epochs:
        return (f"run {run_name} {finished_epochs(epoch)}; pass --epochs N (> {epoch}) to train longer "
                "(going on with its best checkpoint)")
    return (f"run {run_name} is already at epoch {epoch} (--epochs {wanted_epochs}); pass --epochs N (> {epoch}) "
            "to train longer (going on with its best checkpoint)")
