"""Finding and checking the Kaggle data on disk, without decoding the photos.

`load_carvana_data` lists the folders once, pairs every training photo with its mask, checks the
two CSV files, and raises a one-line `DataError` naming the first file at fault. Photos are not
decoded here (Kaggle has 5,088 training and 100,064 test photos): only their headers are read, to
check they all have one size (`carvana.data.checks`); a photo broken past its header is reported
by `carvana.data.images` when it is first read.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path


from carvana.core.errors import DataError
from carvana.core.geometry import Size
from carvana.data.checks import check_masks_csv, check_one_size
from carvana.data.image_files import kind_of_entry
from carvana.data.images import is_image_name
from carvana.kaggle import files as kl
from carvana.kaggle.rle import RLEError, parse_runs
from carvana.kaggle.rle_csv import read_ids, read_unique_rows

# Files that file managers and zip tools leave behind; never data.
_JUNK_NAMES = frozenset(("thumbs.db", "desktop.ini", "__macosx"))
_SHOWN = 5  # offenders named in one message


class StrayFilesWarning(UserWarning):
    """Files in the data dir that are not part of the dataset and are ignored."""


@dataclass(frozen=True)
class CarvanaData:
    """What was found in a Kaggle Carvana data dir. Parts that were not asked for are None/empty."""

    data_dir: Path
    image_size: Size  # of every photo and mask (1918x1280 on Kaggle), checked in every file's header
    train_dir: Path | None = None  # train/ or train_hq/
    masks_dir: Path | None = None
    train_names: list[str] = field(default_factory=list)  # sorted, e.g. 0cdf5b5d0ce1_01.jpg
    test_dir: Path | None = None  # test/ or test_hq/
    test_names: list[str] = field(default_factory=list)  # in sample_submission.csv order
    # train_masks.csv as {photo name: RLE}; None when the training data was not loaded.
    train_rle: dict[str, str] | None = field(default=None, compare=False, repr=False)

    def train_image_path(self, name: str) -> Path:
        return self._need(self.train_dir, "training photos") / name

    def mask_path(self, name: str) -> Path:
        return self._need(self.masks_dir, "training masks") / kl.mask_name(name)

    def test_image_path(self, name: str) -> Path:
        return self._need(self.test_dir, "test photos") / name

    def train_image_paths(self, names: list[str] | None = None) -> list[Path]:
        return [self.train_image_path(n) for n in (self.train_names if names is None else names)]

    def mask_paths(self, names: list[str] | None = None) -> list[Path]:
        return [self.mask_path(n) for n in (self.train_names if names is None else names)]

    def test_image_paths(self, names: list[str] | None = None) -> list[Path]:
        return [self.test_image_path(n) for n in (self.test_names if names is None else names)]

    def _need(self, folder: Path | None, what: str) -> Path:
        if folder is None:
            raise DataError(self.data_dir, f"the {what} were not loaded (load_carvana_data was told not to)")
        return folder


def is_carvana_data_dir(data_dir: Path) -> bool:
    """True when `data_dir` looks like the Kaggle layout for training (cheap: no file is read)."""
    data_dir = Path(data_dir)
    has_train = any(_has_image((data_dir / d)) for d in (kl.TRAIN_DIR, kl.TRAIN_HQ_DIR))
    return has_train and (data_dir / kl.MASKS_DIR).is_dir() and (data_dir / kl.MASKS_CSV).is_file()


def load_carvana_data(
    data_dir: Path,
    *,
    need_train: bool = True,
    need_test: bool = True,
    prefer_high_quality: bool = False,
) -> CarvanaData:
    """Find the training and/or test data in `data_dir` and check that it is complete and consistent.

    `train/` is used unless only `train_hq/` exists (same for `test/`); `prefer_high_quality`
    turns that around. Stray files (`.DS_Store`, `Thumbs.db`, anything that is not a photo or
    mask) are ignored with one `StrayFilesWarning`.
    """
    data_dir = Path(data_dir)
    if not need_train and not need_test:
        raise DataError(data_dir, "nothing to load: need_train and need_test are both False")
    if not data_dir.exists():
        raise DataError(data_dir, "data folder not found (run `python main.py` to fetch the data, or pass --data-dir)")
    if not data_dir.is_dir():
        raise DataError(data_dir, "is a file, expected the data folder")
    if not any(not name.startswith(".") for name in os.listdir(data_dir)):
        raise DataError(
            data_dir,
            f"data folder is empty (expected {kl.TRAIN_DIR}/, {kl.MASKS_DIR}/, {kl.MASKS_CSV}, "
            f"{kl.TEST_DIR}/, {kl.SAMPLE_SUBMISSION_CSV} from Kaggle)",
        )
    stray: list[str] = []
    train_dir = masks_dir = test_dir = None
    train_names: list[str] = []
    test_names: list[str] = []
    if need_train:
        train_dir = _pick_dir(data_dir, kl.TRAIN_DIR, kl.TRAIN_HQ_DIR, prefer_high_quality, "training photos")
        masks_dir = _require_dir(data_dir / kl.MASKS_DIR, "the training masks <car>_<view>_mask.gif")
        train_names = _list_images(train_dir, data_dir, stray)
        mask_names = _list_masks(masks_dir, data_dir, stray)
        _check_pairs(train_dir, masks_dir, train_names, mask_names)
    if need_test:
        test_dir = _pick_dir(data_dir, kl.TEST_DIR, kl.TEST_HQ_DIR, prefer_high_quality, "test photos")
        test_files = set(_list_images(test_dir, data_dir, stray, allow_empty=True))
        test_names = _read_sample_submission(data_dir / kl.SAMPLE_SUBMISSION_CSV, test_dir, test_files)
    if stray:
        stray.sort()
        shown = ", ".join(stray[:_SHOWN]) + (f" and {len(stray) - _SHOWN} more" if len(stray) > _SHOWN else "")
        warnings.warn(f"{data_dir}: ignoring {len(stray)} stray file(s): {shown}", StrayFilesWarning, stacklevel=2)

    # One size for every photo and mask, read from their headers: it is THE size downstream.
    photos = [train_dir / n for n in train_names] + [test_dir / n for n in test_names]  # type: ignore[operator]
    masks = [masks_dir / kl.mask_name(n) for n in train_names]  # type: ignore[operator]
    size = check_one_size(data_dir, photos, masks)
    train_rle = _read_masks_csv(data_dir / kl.MASKS_CSV, size) if need_train else None
    if train_rle is not None:
        check_masks_csv(data_dir / kl.MASKS_CSV, train_rle, train_dir, train_names,  # type: ignore[arg-type]
                        lambda name: masks_dir / kl.mask_name(name), size)  # type: ignore[operator]
    return CarvanaData(
        data_dir=data_dir,
        image_size=size,
        train_dir=train_dir,
        masks_dir=masks_dir,
        train_names=train_names,
        test_dir=test_dir,
        test_names=test_names,
        train_rle=train_rle,
    )


def _has_image(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(is_image_name(e.name) and not e.name.startswith(".") for e in entries)
    except OSError:
        return False


def _require_dir(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        problem = "is a file, expected a folder" if folder.exists() else "folder not found"
        raise DataError(folder, f"{problem} (expected {what}; download the Kaggle data again)")
    return folder


def _pick_dir(data_dir: Path, normal: str, high_quality: str, prefer_high_quality: bool, what: str) -> Path:
    order = (high_quality, normal) if prefer_high_quality else (normal, high_quality)
    for name in order:
        if (data_dir / name).is_dir():
            return data_dir / name
    return _require_dir(data_dir / normal, f"the {what} <car>_<view>.jpg, or {high_quality}/")


def _is_stray(name: str) -> bool:
    return name.startswith(".") or name.lower() in _JUNK_NAMES


def _list_images(folder: Path, data_dir: Path, stray: list[str], allow_empty: bool = False) -> list[str]:
    """The photo names in `folder`, sorted. An entry named like a photo must be one photo file:
    a folder, FIFO or broken link of that name, or two files for one id, is refused by name."""
    names = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not _is_stray(entry.name) and is_image_name(entry.name):
                _require_file(entry)
                names.append(entry.name)
            else:
                stray.append(str(Path(entry.path).relative_to(data_dir)))
    _refuse_two_files_for_one_id(folder, names)
    if not names and not allow_empty:
        nested = folder / folder.name
        if _has_image(nested):  # a zip unpacked into a folder of its own name
            raise DataError(folder, f"has no photos, but {nested.relative_to(data_dir)}/ has: move them up one folder")
        raise DataError(folder, "has no photos (.jpg); download the Kaggle data again")
    return sorted(names)


def _require_file(entry: os.DirEntry) -> None:
    """A photo or mask name must be a (link to a) regular file; never opened here, so a FIFO cannot block."""
    if entry.is_file():
        return
    try:
        problem = f"is {kind_of_entry(os.stat(entry.path).st_mode)}, not an image file"
    except FileNotFoundError:
        problem = f"broken symbolic link (it points to {os.readlink(entry.path)}, which does not exist)"
    except OSError as error:
        problem = f"cannot be read ({error.strerror or error})"
    raise DataError(entry.path, f"{problem}; remove it or put the real file there")


def _refuse_two_files_for_one_id(folder: Path, names: list[str]) -> None:
    """`x_01.jpg` and `x_01.JPG` (or `.jpeg`, `.png`) are one id with one mask and one submission row."""
    by_id: dict[str, list[str]] = {}
    for name in names:
        by_id.setdefault(Path(name).stem, []).append(name)
    # Kaggle's own spelling (.jpg) first; the others are the extra copies named in the message.
    twice = sorted(sorted(group, key=lambda n: (not n.endswith(".jpg"), n)) for group in by_id.values()
                   if len(group) > 1)
    if twice:
        pairs = "; ".join(f"{', '.join(group[1:])} besides {group[0]}" for group in twice[:_SHOWN])
        more = f" and {len(twice) - _SHOWN} more" if len(twice) > _SHOWN else ""
        raise DataError(folder / twice[0][1], f"{len(twice)} id(s) have more than one photo in {folder.name}/ "
                                              f"({pairs}{more}): keep one file per id")


def _list_masks(folder: Path, data_dir: Path, stray: list[str]) -> list[str]:
    names = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not _is_stray(entry.name) and entry.name.endswith(kl.MASK_SUFFIX):
                _require_file(entry)
                names.append(entry.name)
            else:
                stray.append(str(Path(entry.path).relative_to(data_dir)))
    return sorted(names)


def _examples(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _check_pairs(train_dir: Path, masks_dir: Path, images: list[str], masks: list[str]) -> None:
    mask_set = set(masks)
    without_mask = [name for name in images if kl.mask_name(name) not in mask_set]
    if without_mask:
        raise DataError(
            masks_dir / kl.mask_name(without_mask[0]),
            f"mask not found: {len(without_mask)} training photo(s) have no mask ({_examples(without_mask)})",
        )
    image_stems = {Path(name).stem for name in images}
    without_image = [m for m in masks if m[: -len(kl.MASK_SUFFIX)] not in image_stems]
    if without_image:
        raise DataError(
            masks_dir / without_image[0],
            f"mask without a photo in {train_dir.name}/: {len(without_image)} mask(s) have no photo "
            f"({_examples(without_image)})",
        )


def _require_csv(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(path, f"not found (expected {what}; download the Kaggle data again)")


def _read_masks_csv(path: Path, size: Size) -> dict[str, str]:
    """train_masks.csv as {name: RLE}, every RLE checked for photos of `size` (the line is named if not).

    Read by `carvana.kaggle.rle_csv`, the reader of every `img,rle_mask` file, and streamed.
    """
    _require_csv(path, "the training masks as RLE, img,rle_mask")
    fail = lambda problem: DataError(path, problem)  # noqa: E731
    masks: dict[str, str] = {}
    for row in read_unique_rows(path, fail, "has no rows (expected one per training photo)"):
        try:
            parse_runs(row.rle_mask, size.height, size.width)
        except RLEError as error:
            raise DataError(path, f"line {row.line} ({row.img}): malformed RLE: {error}") from None
        masks[row.img] = row.rle_mask
    return masks


def _read_sample_submission(path: Path, test_dir: Path, test_files: set[str]) -> list[str]:
    """The test ids in Kaggle's order, read exactly as the final validator of a submission reads them
    (`carvana.kaggle.rle_csv`): a sample submission accepted here never fails validation later."""
    _require_csv(path, "the test ids, img,rle_mask")
    names = read_ids(path, lambda problem: DataError(path, problem), "has no rows (expected one per test photo)")
    missing = [n for n in names if n not in test_files]
    if missing:
        raise DataError(
            test_dir / missing[0],
            f"photo not found: {len(missing)} id(s) in {path.name} have no photo in {test_dir.name}/ "
            f"({_examples(missing)})",
        )
    return names
