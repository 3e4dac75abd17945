"""Cutouts of new photos, the job this model does outside Kaggle: for any JPEG or PNG of any size, the
car's mask and the photo with a transparent background.

Each photo is predicted as the test photos are (resized to the model's covered size, mirror-padded,
flip TTA if the run used it), its probability map cleaned up and up-sampled to the photo's own size,
then thresholded. For `NAME.jpg` the output folder gets `NAME_mask.png` (grey, 255 = car) and
`NAME_cutout.png` (RGBA, alpha = the mask), each written to a temporary file and renamed into place.
Each photo gets its own two files: where photos share a name (`a.jpg` and `a.png`, or `a.jpg` from two
folders) the later ones are written as `NAME-N`, said in one line each (see `output_stems`). Files of an
earlier cutout run are replaced. A file that cannot be read as a photo is reported in one line and the
others go on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from carvana.core.atomic import atomic_write_bytes
from carvana.core.console import bars_disabled
from carvana.core.errors import ConfigError, DataError
from carvana.core.geometry import Geometry, Size
from carvana.data.datasets import photo_input
from carvana.data.images import IMAGE_SUFFIXES, decode_image, resize_image
from carvana.predict.cleanup import clean_probabilities
from carvana.predict.postprocess import probabilities_to_mask
from carvana.predict.predictor import Predictor

log = logging.getLogger(__name__)

MASK_SUFFIX = "_mask.png"
CUTOUT_SUFFIX = "_cutout.png"


@dataclass
class CutoutReport:
    """What a cutout run did: the photos cut out, and the files that could not be, each with why."""

    out_dir: Path
    written: list[Path] = field(default_factory=list)  # the photos cut out, in the order given
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (file, problem)


def find_photos(inputs: Iterable[Path], out_dir: Path | None = None) -> list[Path]:
    """The photos named by `inputs`: each file as given, and the JPEG/PNG files in each folder (sorted,
    not recursive), a file named twice only once; in `out_dir` itself, not the cutouts written there.
    ConfigError naming an input that does not exist, or a folder without photos."""
    photos: dict[Path, Path] = {}  # the file itself -> the path it was first named by
    for given in map(Path, inputs):
        if given.is_dir():
            ours = out_dir is not None and given.resolve() == Path(out_dir).resolve()
            found = sorted(p for p in given.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not (ours and p.name.endswith((MASK_SUFFIX, CUTOUT_SUFFIX))))
            if not found:
                raise ConfigError(f"{given}: no JPEG or PNG photos in this folder")
        elif given.exists():
            found = [given]
        else:
            raise ConfigError(f"{given}: no such photo or folder")
        for photo in found:
            photos.setdefault(photo.resolve(), photo)
    return list(photos.values())


def output_stems(photos: Sequence[Path]) -> list[str]:
    """The output name of each photo, one per photo: its stem, or where an earlier photo has that stem,
    `STEM-N` with the smallest N >= 2 that is no photo's own stem (so `a.png` beside `a.jpg` and
    `a-2.jpg` is `a-3`). Compared without case, as a macOS or Windows disk compares file names."""
    own = {photo.stem.casefold() for photo in photos}
    taken: set[str] = set()
    stems = []
    for photo in photos:
        stem, n = photo.stem, 1
        while stem.casefold() in taken or (n > 1 and stem.casefold() in own):
            n += 1
            stem = f"{photo.stem}-{n}"
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def cut_out(photo: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """An RGB uint8 (H, W, 3) photo and its (H, W) bool mask -> RGBA uint8 (H, W, 4), alpha 255 on the car."""
    alpha = mask.astype(np.uint8) * np.uint8(255)
    return np.dstack([photo, alpha])


def predict_mask(predictor: Predictor, photo_bgr: np.ndarray, geometry: Geometry, threshold: float,
                 cleanup: str) -> np.ndarray:
    """The (H, W) bool car mask of a BGR uint8 photo of any size, at that size."""
    height, width = photo_bgr.shape[:2]
    small = cv2.cvtColor(resize_image(photo_bgr, geometry.covered_size), cv2.COLOR_BGR2RGB)
    probabilities = predictor.predict_probabilities(photo_input(small, geometry)[None])[0].numpy()
    probabilities = clean_probabilities(probabilities, threshold, cleanup)
    return probabilities_to_mask(probabilities, Size(width, height), threshold)


def write_cutouts(predictor: Predictor, photos: Sequence[Path], out_dir: Path, geometry: Geometry,
                  threshold: float, cleanup: str = "none", progress: bool | None = None) -> CutoutReport:
    """Cut out each of `photos` into `out_dir` (made if missing); unreadable photos are reported and skipped."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = CutoutReport(out_dir)
    bar = tqdm(list(zip(photos, output_stems(photos))), desc="cutout", unit="photo",
               disable=bars_disabled(progress))
    for photo_path, stem in bar:
        try:
            photo_bgr, _ = decode_image(photo_path)
        except DataError as error:
            report.failed.append((photo_path, error.problem))
            log.warning(f"skipped {photo_path}: {error.problem}")
            continue
        mask = predict_mask(predictor, photo_bgr, geometry, threshold, cleanup)
        _write_pngs(out_dir, stem, cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2RGB), mask)
        report.written.append(photo_path)
        if stem != photo_path.stem:
            log.info(f"{photo_path}: written as {stem}{MASK_SUFFIX} and {stem}{CUTOUT_SUFFIX} "
                     f"(an earlier photo is also named {photo_path.stem})")
    return report


def _write_pngs(out_dir: Path, stem: str, photo: np.ndarray, mask: np.ndarray) -> None:
    """`STEM_mask.png` and `STEM_cutout.png` of an RGB photo and its bool mask, each atomically."""
    atomic_write_bytes(out_dir / f"{stem}{MASK_SUFFIX}", _png(mask.astype(np.uint8) * np.uint8(255)))
    cutout = cv2.cvtColor(cut_out(photo, mask), cv2.COLOR_RGBA2BGRA)
    atomic_write_bytes(out_dir / f"{stem}{CUTOUT_SUFFIX}", _png(cutout))


def _png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise DataError(Path(".png"), "OpenCV could not encode the PNG")
    return encoded.tobytes()
