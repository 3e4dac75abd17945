"""The built-in sample dataset: synthetic turntable photos in exactly the Kaggle layout.

`python main.py` trains on this when there is no Kaggle data and no credentials: random 3-D cars
(`sample_car`), 16 views each in a Carvana-like studio (`sample_scene`), mostly white, black, silver
and grey on a near-white wall, so no single grey level separates car from studio.
The set is written into a temporary folder, moved into place and only then marked complete; a lock
on `data_dir` makes a second process wait and reuse it; the same seed gives byte-identical files.
"""
from __future__ import annotations

import csv
import io
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from carvana.core.errors import CarvanaError, ConfigError
from carvana.core.geometry import Size
from carvana.core.locks import FolderLock
from carvana.core.process_lifetime import end_with_main_process, process_runs
from carvana.core.text import count
from carvana.kaggle import rle
from carvana.kaggle import files as layout
from carvana.kaggle.rle_csv import write_rle_rows
from carvana.sample import car as sample_car
from carvana.sample import scene as sample_scene
from carvana.sample.car import CarDesign

DEFAULT_TRAIN_CARS = 24
DEFAULT_TEST_CARS = 6
JPEG_QUALITY = 90
NOISE_SIGMA = 2.0  # grey levels of sensor noise
STAGING_PREFIX = ".tmp-sample-"
LOCK_NAME = ".sample.lock"
# Below this many megapixels in all, worker processes cost more to start than they save.
PARALLEL_MIN_MEGAPIXELS = 40.0
# Kaggle's sample_submission.csv holds this placeholder RLE for every test image.
PLACEHOLDER_RLE = "1 1"

MODELS = {  # plausible metadata.csv rows per body style
    "sedan": [("Honda", "Accord"), ("Toyota", "Camry"), ("Nissan", "Altima"), ("Hyundai", "Sonata"),
              ("Chevrolet", "Malibu"), ("Acura", "TLX"), ("Ford", "Fusion"), ("BMW", "3 Series")],
    "hatchback": [("Volkswagen", "Golf"), ("Ford", "Focus"), ("Honda", "Fit"), ("Mazda", "Mazda3"),
                  ("Toyota", "Prius"), ("Chevrolet", "Sonic")],
    "suv": [("Ford", "Explorer"), ("Toyota", "RAV4"), ("Honda", "CR-V"), ("Jeep", "Grand Cherokee"),
            ("Chevrolet", "Tahoe"), ("Nissan", "Rogue"), ("Kia", "Sorento")],
    "wagon": [("Subaru", "Outback"), ("Volvo", "V60"), ("Volkswagen", "Jetta SportWagen"), ("Audi", "allroad")],
    "coupe": [("Ford", "Mustang"), ("Chevrolet", "Camaro"), ("BMW", "4 Series"), ("Dodge", "Challenger")],
}
TRIMS = ("Base", "LX", "EX", "SE", "SEL", "Sport", "Limited", "Premium", "Touring", "SV")
PACKAGES = ("", "", "FWD", "AWD", "w/Navigation", "w/Technology Package", "V6")


@dataclass(frozen=True)
class SampleReport:
    """What `generate_sample_dataset` wrote."""

    data_dir: Path
    train_cars: int
    test_cars: int
    train_images: int
    test_images: int
    size: Size
    seed: int
    elapsed_s: float
    train_dir: Path
    masks_dir: Path
    test_dir: Path
    masks_csv: Path
    sample_submission_csv: Path
    metadata_csv: Path

    def summary(self) -> str:
        return (f"sample data: {count(self.train_cars, 'train car')} ({count(self.train_images, 'image')}), "
                f"{count(self.test_cars, 'test car')} ({count(self.test_images, 'image')}) at {self.size} "
                f"in {self.data_dir} ({self.elapsed_s:.1f} s)")


@dataclass(frozen=True)
class CarJob:
    """Everything a worker needs to photograph one car; results depend on nothing else."""

    car_id: str
    index: int  # position among all cars, which seeds its randomness
    split: str  # layout.TRAIN_DIR or layout.TEST_DIR
    design: CarDesign
    studio: int
    seed: int
    size: Size
    staging: Path


def generate_sample_dataset(
    data_dir: Path,
    *,
    train_cars: int = DEFAULT_TRAIN_CARS,
    test_cars: int = DEFAULT_TEST_CARS,
    size: Size = Size(*layout.ORIGINAL_SIZE),
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> SampleReport:
    """Write a synthetic Carvana dataset into `data_dir` and mark it complete.

    `workers` is the number of processes drawing cars (None: one per CPU core for large sets,
    none for small ones); it does not change a single byte of the output.
    """
    size = Size(*size)
    _check_arguments(train_cars, test_cars, size, workers)
    with _generation_lock(Path(data_dir), announce=None):
        return _generate(Path(data_dir), train_cars, test_cars, size, seed, progress, workers)


def ensure_sample_dataset(
    data_dir: Path,
    *,
    train_cars: int | None = None,
    size: Size | None = None,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> SampleReport | None:
    """The sample in `data_dir`, generated unless a complete one with these settings is there.

    Returns None when the set was already there (for instance made meanwhile by another process
    this one waited for). `train_cars`/`size` None: whatever a complete set has, else the defaults.
    """
    train = DEFAULT_TRAIN_CARS if train_cars is None else train_cars
    shape = Size(*layout.ORIGINAL_SIZE) if size is None else Size(*size)
    _check_arguments(train, DEFAULT_TEST_CARS, shape, None)
    data_dir = Path(data_dir)
    with _generation_lock(data_dir, announce):
        if sample_is_complete(data_dir, train_cars, size):
            return None
        if announce is not None:
            announce(_generating(data_dir, train, shape))
        wanted: dict[str, object] = {}
        if train_cars is not None:
            wanted["train_cars"] = train_cars
        if size is not None:
            wanted["size"] = Size(*size)
        return generate_sample_dataset(data_dir, progress=progress, **wanted)


def sample_is_complete(data_dir: Path, train_cars: int | None = None, size: Size | None = None) -> bool:
    """A complete built-in sample is in `data_dir`, with these settings where they are given."""
    marker = layout.read_complete_marker(Path(data_dir))
    if marker is None or marker.get("source") != "sample":
        return False
    if train_cars is not None and marker.get("train_cars") != train_cars:
        return False
    return size is None or str(marker.get("size")) == str(Size(*size))


def sample_settings(data_dir: Path) -> tuple[int | None, Size | None]:
    """The training cars and photo size of the complete sample in `data_dir` ((None, None) if there is none)."""
    marker = layout.read_complete_marker(Path(data_dir))
    if marker is None or marker.get("source") != "sample":
        return None, None
    cars = marker.get("train_cars")
    try:
        size = Size.parse(str(marker.get("size")))
    except CarvanaError:
        size = None
    return (cars if isinstance(cars, int) else None), size


def _generating(data_dir: Path, train_cars: int, size: Size) -> str:
    """What generating says, naming the sample it replaces: a run trained on that one must not lose it silently."""
    old_cars, old_size = sample_settings(data_dir)
    if old_cars is None:
        return f"Generating the built-in sample dataset in {data_dir} ..."
    return (f"Replacing the built-in sample in {data_dir} ({old_cars} training cars at {old_size}) with one of "
            f"{train_cars} training cars at {size}; runs trained on the old one regenerate it when resumed ...")


_HELD: dict[Path, int] = {}  # data dirs whose generation lock this process holds, and how often


class _generation_lock:
    """Hold the data dir's generation lock, saying who we wait for when another process has it.

    Re-entrant within a process (`ensure_sample_dataset` generates through `generate_sample_dataset`):
    a second flock on a new file descriptor would wait for this very process.
    """

    def __init__(self, data_dir: Path, announce: Callable[[str], None] | None):
        self.lock = FolderLock(data_dir, LOCK_NAME)
        self.key = Path(os.path.abspath(data_dir))
        self.announce = announce

    def __enter__(self) -> FolderLock:
        if self.key in _HELD:
            _HELD[self.key] += 1
            return self.lock
        try:
            taken = self.lock.acquire(wait=False)
        except CarvanaError as e:
            raise CarvanaError(f"{self.lock.folder}: cannot create the sample data here ({e})") from None
        if not taken:
            if self.announce is not None:
                holder = self.lock.holder()
                self.announce(f"{self.lock.folder}: another process (pid {holder or 'unknown'}) is generating "
                              "the sample here; waiting for it ...")
            self.lock.acquire(wait=True)
        _HELD[self.key] = 1
        return self.lock

    def __exit__(self, *exc: object) -> None:
        _HELD[self.key] -= 1
        if _HELD[self.key] == 0:
            del _HELD[self.key]
            self.lock.release()


def _generate(data_dir: Path, train_cars: int, test_cars: int, size: Size, seed: int, progress: bool,
              workers: int | None) -> SampleReport:
    """Generate the set; the caller holds the data dir's generation lock."""
    started = time.perf_counter()
    jobs_args = _plan_cars(train_cars, test_cars, seed)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(data_dir)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=data_dir))
    except OSError as e:
        raise CarvanaError(f"{data_dir}: cannot create the sample data here ({e.strerror or e})") from None
    try:
        jobs = [CarJob(car_id, i, split, design, studio, seed, size, staging)
                for i, (car_id, split, design, studio) in enumerate(jobs_args)]
        for split in (layout.TRAIN_DIR, layout.MASKS_DIR, layout.TEST_DIR):
            (staging / split).mkdir()
        rles = _photograph_all(jobs, size, progress, workers)
        _write_tables(staging, jobs, rles, seed)
        _move_into_place(staging, data_dir)
    except OSError as e:
        raise CarvanaError(
            f"{data_dir}: writing the sample data failed ({e.strerror or e}); nothing was marked complete"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    n_train, n_test = train_cars * layout.VIEWS_PER_CAR, test_cars * layout.VIEWS_PER_CAR
    layout.write_complete_marker(data_dir, "sample", {
        "train_cars": train_cars, "test_cars": test_cars, "train_images": n_train, "test_images": n_test,
        "size": str(size), "seed": seed,
    })
    return SampleReport(
        data_dir=data_dir, train_cars=train_cars, test_cars=test_cars, train_images=n_train, test_images=n_test,
        size=size, seed=seed, elapsed_s=time.perf_counter() - started,
        train_dir=data_dir / layout.TRAIN_DIR, masks_dir=data_dir / layout.MASKS_DIR,
        test_dir=data_dir / layout.TEST_DIR, masks_csv=data_dir / layout.MASKS_CSV,
        sample_submission_csv=data_dir / layout.SAMPLE_SUBMISSION_CSV, metadata_csv=data_dir / layout.METADATA_CSV,
    )


def _check_arguments(train_cars: int, test_cars: int, size: Size, workers: int | None) -> None:
    if train_cars < 1 or test_cars < 1:
        raise ConfigError(f"sample cars {train_cars} train / {test_cars} test: need at least one of each")
    if size.width < 32 or size.height < 32:
        raise ConfigError(f"sample size {size}: each side must be at least 32 pixels")
    if workers is not None and workers < 1:
        raise ConfigError(f"sample workers {workers}: must be at least 1")


def _plan_cars(train_cars: int, test_cars: int, seed: int) -> list[tuple[str, str, CarDesign, int]]:
    """(car id, split, design, studio) for every car, train cars first."""
    ids_rng = np.random.default_rng([seed, 0x1D5])
    ids: list[str] = []
    while len(ids) < train_cars + test_cars:
        car_id = ids_rng.bytes(6).hex()  # 12 lowercase hex digits, like Kaggle's ids
        if car_id not in ids:
            ids.append(car_id)
    plan = []
    for i, car_id in enumerate(ids):
        rng = np.random.default_rng([seed, i, 0])
        split = layout.TRAIN_DIR if i < train_cars else layout.TEST_DIR
        plan.append((car_id, split, sample_car.random_design(rng), int(rng.integers(len(sample_scene.STUDIOS)))))
    return plan


def image_names(car_id: str) -> list[str]:
    return [f"{car_id}_{view:02d}.jpg" for view in range(1, layout.VIEWS_PER_CAR + 1)]


def _photograph_all(jobs: list[CarJob], size: Size, progress: bool, workers: int | None) -> dict[str, str]:
    """Photograph every car; returns the RLE of every train image's mask, by image name."""
    megapixels = len(jobs) * layout.VIEWS_PER_CAR * size.width * size.height / 1e6
    if workers is None:
        workers = min(os.cpu_count() or 1, len(jobs)) if megapixels >= PARALLEL_MIN_MEGAPIXELS else 1
    bar = tqdm(total=len(jobs) * layout.VIEWS_PER_CAR, desc="sample data", unit="img", disable=not progress)
    rles: dict[str, str] = {}
    with bar:
        if workers == 1:
            for result in map(photograph_car, jobs):
                rles.update(result)
                bar.update(layout.VIEWS_PER_CAR)
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=_process_context(),
                                     initializer=end_with_main_process) as pool:
                for result in pool.map(photograph_car, jobs):
                    rles.update(result)
                    bar.update(layout.VIEWS_PER_CAR)
    return rles


def _process_context() -> multiprocessing.context.BaseContext:
    """Fork where there is fork: spawned workers re-run the caller's script, which breaks scripts
    without an `if __name__ == "__main__"` guard. (Forked workers must leave OpenCV's thread
    count alone: cv2.setNumThreads in a child forked after OpenCV started its pool deadlocks.)"""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def photograph_car(job: CarJob) -> dict[str, str]:
    """Write the 16 photos (and, for train cars, masks) of one car; return {image name: RLE}."""
    pieces = sample_car.build_car(job.design)
    rng = np.random.default_rng([job.seed, job.index, 1])
    scuffs = sample_scene.turntable_scuffs(rng)
    start_yaw = rng.normal(0, 0.02)
    offset = tuple(rng.uniform(-0.12, 0.12, 2))
    shot = sample_scene.random_shot(rng, job.design.length)
    encoded = {}
    for view, name in enumerate(image_names(job.car_id), start=1):
        view_rng = np.random.default_rng([job.seed, job.index, 2, view])
        pose = sample_scene.view_pose(view, start_yaw, offset, view_rng.normal(0, 0.015))
        image, mask = sample_scene.photograph(pieces, job.design, job.studio, pose, job.size, scuffs, shot)
        image = _as_photo(image, view_rng)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise CarvanaError(f"{name}: OpenCV could not encode the sample photo as JPEG")
        (job.staging / job.split / name).write_bytes(jpeg.tobytes())
        if job.split == layout.TRAIN_DIR:
            (job.staging / layout.MASKS_DIR / layout.mask_name(name)).write_bytes(mask_gif(mask))
            encoded[name] = rle.encode(mask)
    return encoded


def _as_photo(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lens softness and sensor noise, scaled to the image's size like a resized photo."""
    h, w = image.shape[:2]
    sigma = 0.9 * w / layout.ORIGINAL_SIZE[0]
    if sigma >= 0.4:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    brighter, darker = _noise(h, w)
    y, x = (int(v) for v in rng.integers(0, 64, 2))
    image = cv2.add(image, brighter[y:y + h, x:x + w])
    return cv2.subtract(image, darker[y:y + h, x:x + w])


@lru_cache(maxsize=2)
def _noise(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed field of Gaussian noise, split in its positive and negative parts (uint8, for cv2)."""
    field = np.random.default_rng(7).normal(0, NOISE_SIGMA, (h + 64, w + 64, 3)).round()
    return np.clip(field, 0, 255).astype(np.uint8), np.clip(-field, 0, 255).astype(np.uint8)


def mask_gif(mask: np.ndarray) -> bytes:
    """A 0/1 mask as Kaggle's palette GIF: index 0 black background, index 1 white car."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 255, 255])
    buffer = io.BytesIO()
    image.save(buffer, format="GIF", optimize=False)  # optimize could renumber the palette
    return buffer.getvalue()


def _write_tables(staging: Path, jobs: list[CarJob], rles: dict[str, str], seed: int) -> None:
    train = sorted(rles)
    test = sorted(name for job in jobs if job.split == layout.TEST_DIR for name in image_names(job.car_id))
    write_rle_rows(staging / layout.MASKS_CSV, [(name, rles[name]) for name in train])
    write_rle_rows(staging / layout.SAMPLE_SUBMISSION_CSV, [(name, PLACEHOLDER_RLE) for name in test])
    rows = [_metadata_row(job.car_id, job.design, np.random.default_rng([seed, job.index, 3]))
            for job in sorted(jobs, key=lambda j: j.car_id)]
    _write_csv(staging / layout.METADATA_CSV, ("id", "year", "make", "model", "trim1", "trim2"), rows)


def _metadata_row(car_id: str, design: CarDesign, rng: np.random.Generator) -> tuple[str, ...]:
    make, model = MODELS[design.style][int(rng.integers(len(MODELS[design.style])))]
    year = int(rng.integers(2005, 2018))
    return car_id, str(year), make, model, str(rng.choice(TRIMS)), str(rng.choice(PACKAGES))


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


OUTPUTS = (layout.TRAIN_DIR, layout.MASKS_DIR, layout.TEST_DIR, layout.MASKS_CSV,
           layout.SAMPLE_SUBMISSION_CSV, layout.METADATA_CSV)


def _move_into_place(staging: Path, data_dir: Path) -> None:
    """Replace the data dir's files with the staged ones; the old marker goes first."""
    (data_dir / layout.COMPLETE_MARKER).unlink(missing_ok=True)
    for name in OUTPUTS:
        target = data_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(staging / name, target)


def _remove_stale_staging(data_dir: Path) -> None:
    """Folders left by a generation that was killed before it could clean up (its process is gone)."""
    for stale in data_dir.glob(STAGING_PREFIX + "*"):
        pid = stale.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if stale.is_dir() and not (pid.isdigit() and process_runs(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
