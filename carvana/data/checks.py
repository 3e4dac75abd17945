"""Checks across the whole data set, made once when it is loaded, before any training.

Two things every later stage takes for granted and cannot check itself:

* one pixel size: `CarvanaData.image_size` is THE size that predictions are encoded and scored
  at, so every photo and mask must have it. Every file's header is read (a few kB each, never a
  decode), so a mix is refused up front, naming the odd files and their sizes.
* train_masks.csv agrees with train_masks/: training reads the GIFs and validation scoring reads
  the CSV, so rows that disagree would make the two measure different things. Every photo must
  have a row and every row a photo; a seeded sample of rows is decoded and compared with the GIFs
  (a full comparison would decode every mask at load time).
"""
from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from carvana.core.console import bars_disabled
from carvana.core.errors import DataError
from carvana.core.geometry import Size
from carvana.data.images import MASK_FORMATS, PHOTO_FORMATS, header_size, read_mask
from carvana.kaggle import rle

_SHOWN = 5  # offenders named in one message
# Header reads wait on the disk, not the CPU: a few threads keep several reads in flight.
_HEADER_THREADS = 4
_CHUNK = 256
# Rows of train_masks.csv compared with their GIF at load time, and the seed that picks them.
CSV_SAMPLE_ROWS = 16
CSV_SAMPLE_SEED = 0
# A CSV row and its GIF agree when their Dice is at least this (exact copies give 1.0).
_AGREEING_DICE = 0.99


def _sizes(paths: Sequence[Path], formats: tuple[str, ...], progress: Callable[[int], None]) -> list[Size]:
    def read(chunk: Sequence[Path]) -> list[Size]:
        sizes = [header_size(path, formats) for path in chunk]
        progress(len(chunk))
        return sizes

    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    if len(chunks) <= 1:
        return read(paths) if paths else []
    with ThreadPoolExecutor(max_workers=min(_HEADER_THREADS, len(chunks))) as pool:
        return [size for sizes in pool.map(read, chunks) for size in sizes]


def _shown(root: Path, odd: list[tuple[Path, Size]]) -> str:
    items = [f"{_relative(path, root)} {size}" for path, size in odd[:_SHOWN]]
    more = f" and {len(odd) - _SHOWN} more" if len(odd) > _SHOWN else ""
    return ", ".join(items) + more


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def check_one_size(root: Path, photos: Sequence[Path], masks: Sequence[Path] = (), progress: bool = True) -> Size:
    """The size every photo and mask has, read from their headers; DataError naming the odd ones.

    The size most photos have is taken as the right one. `root` only shortens the names shown.
    A bar appears on a terminal when reading the headers takes more than a second.
    """
    from tqdm import tqdm

    total = len(photos) + len(masks)
    with tqdm(total=total, desc="Checking photo and mask sizes", unit="file", delay=1.0, leave=False,
              disable=bars_disabled(None) if progress else True, file=sys.stderr) as bar:
        photo_sizes = _sizes(photos, PHOTO_FORMATS, bar.update)
        mask_sizes = _sizes(masks, MASK_FORMATS, bar.update)
    if not photo_sizes:
        raise DataError(root, "no photos to read the image size from")
    counts = Counter(photo_sizes)
    size, _ = counts.most_common(1)[0]
    odd_photos = [(p, s) for p, s in zip(photos, photo_sizes) if s != size]
    if odd_photos:
        raise DataError(
            odd_photos[0][0],
            f"{len(odd_photos)} of {len(photos)} photos are not {size} like the other {counts[size]} "
            f"({_shown(root, odd_photos)}): every photo must have the same size; resize or remove the odd ones",
        )
    odd_masks = [(p, s) for p, s in zip(masks, mask_sizes) if s != size]
    if odd_masks:
        raise DataError(
            odd_masks[0][0],
            f"{len(odd_masks)} of {len(masks)} masks are not {size} like the photos "
            f"({_shown(root, odd_masks)}): each mask must have its photo's size; download the masks again",
        )
    return size


def _line_numbers(csv_path: Path, names: set[str]) -> dict[str, int]:
    """The line (as an editor numbers them, header = 1) on which each of `names` first appears."""
    found: dict[str, int] = {}
    try:
        with open(csv_path, encoding="utf-8", errors="replace", newline="") as file:
            for number, line in enumerate(file, start=1):
                name = line.split(",", 1)[0].strip().strip('"')
                if name in names and name not in found:
                    found[name] = number
                    if len(found) == len(names):
                        break
    except OSError:
        pass
    return found


def _at_line(lines: Mapping[str, int], name: str) -> str:
    return f"line {lines[name]} ({name})" if name in lines else f"the row of {name}"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(np.logical_and(a, b))) / total


def check_masks_csv(
    csv_path: Path,
    rle_by_name: Mapping[str, str],
    train_dir: Path,
    train_names: Sequence[str],
    mask_path: Callable[[str], Path],
    size: Size,
    sample_rows: int = CSV_SAMPLE_ROWS,
) -> None:
    """train_masks.csv and train_masks/ describe the same masks; DataError naming the CSV line if not.

    Every training photo needs a row and every row a photo; `sample_rows` rows, picked with a
    fixed seed, are decoded and compared with their GIF.
    """
    photos = set(train_names)
    without_row = [name for name in train_names if name not in rle_by_name]
    if without_row:
        shown = ", ".join(without_row[:_SHOWN]) + (f" and {len(without_row) - _SHOWN} more"
                                                  if len(without_row) > _SHOWN else "")
        raise DataError(csv_path, f"has no row for {len(without_row)} photo(s) in {train_dir.name}/ ({shown}); "
                                  "download train_masks.csv again, or remove those photos")
    without_photo = [name for name in rle_by_name if name not in photos]
    if without_photo:
        lines = _line_numbers(csv_path, set(without_photo[:_SHOWN]))
        shown = ", ".join(_at_line(lines, name) for name in without_photo[:_SHOWN])
        more = f" and {len(without_photo) - _SHOWN} more" if len(without_photo) > _SHOWN else ""
        raise DataError(csv_path, f"{len(without_photo)} row(s) name a photo that is not in {train_dir.name}/ "
                                  f"({shown}{more}); download the training photos again, or remove those rows")
    ordered = sorted(train_names)
    rng = np.random.default_rng(CSV_SAMPLE_SEED)
    picked = sorted(rng.choice(len(ordered), size=min(sample_rows, len(ordered)), replace=False).tolist())
    disagreeing: list[tuple[str, float]] = []
    for index in picked:
        name = ordered[index]
        from_gif = read_mask(mask_path(name), expected_size=size)
        from_csv = rle.decode(rle_by_name[name], size.height, size.width)
        dice = _dice(from_gif, from_csv)
        if dice < _AGREEING_DICE:
            disagreeing.append((name, dice))
    if disagreeing:
        name, dice = disagreeing[0]
        lines = _line_numbers(csv_path, {name})
        gif = mask_path(name)
        raise DataError(
            csv_path,
            f"{_at_line(lines, name)} disagrees with {gif.parent.name}/{gif.name} (Dice {dice:.2f}; "
            f"{len(disagreeing)} of {len(picked)} rows checked disagree): the CSV and the GIFs come from "
            "different versions of the data; download train_masks.csv and train_masks.zip again",
        )
