"""Kaggle's size, end to end on this machine: 5,088 training and 100,064 test photos at 1918x1280.

    .venv/bin/python bench/bench_scale.py                      # the full size (about 2 hours on 2 cores)
    .venv/bin/python bench/bench_scale.py --test-photos 2000   # a smaller test set, to try it
    .venv/bin/python bench/bench_scale.py --layout extracted   # the data dir already unzipped

Builds, once, under `--root` (default /tmp/carvana-scale; about 11 GB for the zips, and as much again once
the run extracts them):
- a data dir in Kaggle's layout: the 96 real training cars of ../shared/fixtures/carvana-real512,
  un-squashed to 1918x1280 (photo as JPEG at Kaggle's quality 55, GIF mask, RLE), hardlinked under new
  car ids up to 318 cars (5,088 photos); the 32 real Kaggle test photos hardlinked under 6,254 x 16 =
  100,064 test names; sample_submission.csv and metadata.csv with those ids;
- the competition's zip files made from it (as Kaggle ships them), mounted read-only where the
  benchmark runs as root (as a notebook's /kaggle/input is).

Then runs the whole command as a Kaggle notebook would, with a step budget:

    python main.py --data-dir ZIPS --output-dir WORK/out --log-dir WORK/logs --max-steps N

and reports: the time until training starts (the data extracted and checked, the decoded cache built),
each stage's time from the lines the command prints, the peak resident memory (the main process, and
all its processes together, sampled every 0.2 s), the disk each output takes, the test-set prediction
throughput, the total time and the submission's size. The copies of the same photos train nothing new:
this measures speed and size, not accuracy (bench_accuracy.py does that).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_accuracy import KAGGLE_SIZE, REAL512, unsquash_mask, write_rle_csv  # noqa: E402
from bench.common import REAL_TEST_PHOTOS, print_table, record  # noqa: E402
from bench.fixtures import write_kaggle_zips, write_palette_gif  # noqa: E402
from carvana.data.images import read_mask  # noqa: E402
from carvana.kaggle import files as kl  # noqa: E402
from carvana.kaggle import rle  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_CARS = 318  # Kaggle's 5,088 training photos
TEST_PHOTOS = 100_064  # Kaggle's test set
KAGGLE_JPEG_QUALITY = 55  # the quantisation tables of Kaggle's photos (../shared/fixtures/carvana-real/README.md)
BUILT = ".bench-scale-built"
SAMPLE_EVERY_S = 0.2


# --------------------------------------------------------------------------- the Kaggle-size data


def car_name(kind: str, index: int) -> str:
    return hashlib.sha1(f"{kind}-{index}".encode()).hexdigest()[:12]


def build_layout(folder: Path, train_cars: int, test_photos: int) -> Path:
    """`folder` in Kaggle's layout at Kaggle's size (reused when an earlier run built the same)."""
    wanted = f"{train_cars} {test_photos}"
    if (folder / BUILT).is_file() and (folder / BUILT).read_text() == wanted:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    originals = folder / ".originals"
    for part in (kl.TRAIN_DIR, kl.MASKS_DIR, kl.TEST_DIR, originals):
        (folder / part).mkdir(parents=True, exist_ok=True)
    sources = sorted((REAL512 / kl.TRAIN_DIR).glob("*.jpg"))
    if not sources or not REAL_TEST_PHOTOS.is_dir():
        raise SystemExit(f"needs the real photos of {REAL512} and {REAL_TEST_PHOTOS}")
    print(f"Building a Kaggle-size layout in {folder}: un-squashing {len(sources)} real training photos ...",
          flush=True)
    rles = {photo.name: unsquash_pair(photo, originals) for photo in sources}
    source_cars = sorted({kl.car_id(p.name) for p in sources})
    rows = []
    for index in range(train_cars):
        source_car, car = source_cars[index % len(source_cars)], car_name("train", index)
        for view in range(1, kl.VIEWS_PER_CAR + 1):
            source, name = f"{source_car}_{view:02d}.jpg", f"{car}_{view:02d}.jpg"
            os.link(originals / source, folder / kl.TRAIN_DIR / name)
            os.link(originals / kl.mask_name(source), folder / kl.MASKS_DIR / kl.mask_name(name))
            rows.append((name, rles[source]))
    write_rle_csv(folder / kl.MASKS_CSV, rows)
    test_sources = sorted(REAL_TEST_PHOTOS.glob("*.jpg"))
    test_names = [f"{car_name('test', i // kl.VIEWS_PER_CAR)}_{i % kl.VIEWS_PER_CAR + 1:02d}.jpg"
                  for i in range(test_photos)]
    for i, name in enumerate(test_names):
        os.link(test_sources[i % len(test_sources)], folder / kl.TEST_DIR / name)
    write_rle_csv(folder / kl.SAMPLE_SUBMISSION_CSV, [(name, "1 1") for name in test_names])
    cars = sorted({kl.car_id(n) for n, _ in rows})
    (folder / kl.METADATA_CSV).write_text("id,year,make,model,trim1,trim2\n"
                                          + "".join(f"{car},2017,make,model,a,b\n" for car in cars))
    (folder / BUILT).write_text(wanted)
    return folder


def unsquash_pair(photo: Path, folder: Path) -> str:
    """The 512x512 fixture photo and mask back at 1918x1280 in `folder`; returns the mask's RLE."""
    image = cv2.resize(cv2.imread(str(photo), cv2.IMREAD_COLOR), tuple(KAGGLE_SIZE), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(folder / photo.name), image, [cv2.IMWRITE_JPEG_QUALITY, KAGGLE_JPEG_QUALITY])
    mask = unsquash_mask(read_mask(REAL512 / kl.MASKS_DIR / kl.mask_name(photo.name)))
    write_palette_gif(mask, folder / kl.mask_name(photo.name))
    return rle.encode(mask)


def build_zips(layout: Path, folder: Path) -> Path:
    wanted = (layout / BUILT).read_text()
    if (folder / BUILT).is_file() and (folder / BUILT).read_text() == wanted:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    print(f"Writing Kaggle's zip files into {folder} ...", flush=True)
    write_kaggle_zips(layout, folder)
    (folder / BUILT).write_text(wanted)
    return folder


@contextmanager
def read_only(folder: Path) -> Iterator[bool]:
    """`folder` bind-mounted read-only on itself where this runs as root (as Kaggle mounts its input)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield False
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
    mounted = mounted and subprocess.run(["mount", "-o", "remount,bind,ro", str(folder), str(folder)],
                                         capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


# --------------------------------------------------------------------------- measuring the run


@dataclass
class Sampled:
    main_peak_mb: float = 0.0
    tree_peak_mb: float = 0.0
    lines: list[tuple[float, str]] = field(default_factory=list)


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def sample_memory(process: subprocess.Popen, sampled: Sampled) -> None:
    while process.poll() is None:
        sampled.main_peak_mb = max(sampled.main_peak_mb, rss_mb(process.pid))
        sampled.tree_peak_mb = max(sampled.tree_peak_mb, sum(rss_mb(pid) for pid in process_tree(process.pid)))
        time.sleep(SAMPLE_EVERY_S)


def run_command(args: list[str], log: Path) -> tuple[Sampled, float, int]:
    """`python main.py ARGS`, its output lines timestamped (seconds from the start) and its memory sampled."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    sampled = Sampled()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, str(REPO_ROOT / "main.py"), *args], cwd=log.parent, env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        sampler = threading.Thread(target=sample_memory, args=(process, sampled), daemon=True)
        sampler.start()
        assert process.stdout is not None
        for line in process.stdout:
            stamp = time.monotonic() - started
            sampled.lines.append((stamp, line.rstrip("\n")))
            out.write(f"[{stamp:8.1f}s] {line}")
            print(f"[{stamp:8.1f}s] {line}", end="", flush=True)
        code = process.wait()
        sampler.join()
    return sampled, time.monotonic() - started, code


def when(lines: list[tuple[float, str]], pattern: str) -> float | None:
    found = [stamp for stamp, line in lines if re.search(pattern, line)]
    return found[0] if found else None


def disk_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    seen: set[int] = set()
    total = 0
    for item in path.rglob("*") if path.exists() else ():
        info = item.lstat()
        if item.is_file() and info.st_ino not in seen:
            seen.add(info.st_ino)
            total += info.st_blocks * 512
    return total / 2**20


# --------------------------------------------------------------------------- main


def main(root: Path = Path("/tmp/carvana-scale"), train_cars: int = TRAIN_CARS, test_photos: int = TEST_PHOTOS,
         layout_kind: str = "zips", max_steps: int = 40, extra: list[str] | None = None) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    layout = build_layout(root / "layout", train_cars, test_photos)
    data_dir = build_zips(layout, root / "carvana-image-masking-challenge") if layout_kind == "zips" else layout
    build_s = time.monotonic() - started
    work = root / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    free_before = shutil.disk_usage(work).free
    args = ["--data-dir", str(data_dir), "--output-dir", str(work / "out"), "--log-dir", str(work / "logs"),
            "--max-steps", str(max_steps), *(extra or [])]
    print(f"\nmain.py {' '.join(args)}", flush=True)
    with read_only(data_dir) as mounted:
        sampled, total_s, code = run_command(args, work / "main.log")
    if code != 0:
        raise SystemExit(f"main.py failed (exit {code}); see {work / 'main.log'}")
    lines = sampled.lines
    out = work / "out"
    submission = out / "submit.csv.gz"
    figures = {
        "train_photos": train_cars * kl.VIEWS_PER_CAR, "test_photos": test_photos, "layout": layout_kind,
        "read_only_mount": mounted, "max_steps": max_steps, "build_s": round(build_s, 1),
        "data_ready_s": when(lines, r"^Dataset: "), "training_starts_s": when(lines, r"^Decoded cache: "),
        "first_epoch_done_s": when(lines, r"^epoch 1/"), "scoring_starts_s": when(lines, r"^Scoring the best"),
        "prediction_starts_s": when(lines, r"^Predicting \d+ test images"),
        "submission_valid_s": when(lines, r"submit\.csv\.gz: valid"), "total_s": round(total_s, 1),
        "main_peak_rss_mb": round(sampled.main_peak_mb), "all_processes_peak_rss_mb": round(sampled.tree_peak_mb),
        "disk_extracted_mb": round(disk_mb(out / "data")), "disk_cache_mb": round(disk_mb(out / "cache")),
        "disk_models_mb": round(disk_mb(out / "models")), "disk_validation_mb": round(disk_mb(out / "validation")),
        "submission_mb": round(disk_mb(submission), 1), "disk_used_by_run_mb": round((free_before - shutil.disk_usage(
            work).free) / 2**20),
    }
    if figures["prediction_starts_s"] is not None and figures["submission_valid_s"] is not None:
        seconds = figures["submission_valid_s"] - figures["prediction_starts_s"]
        figures["predict_and_validate_s"] = round(seconds, 1)
        figures["test_photos_per_s"] = round(test_photos / seconds, 1)
    report(figures)
    record("scale", figures)
    return figures


def report(figures: dict) -> None:
    print_table(f"Kaggle's size on this machine ({figures['train_photos']} training, {figures['test_photos']} test "
                f"photos, {figures['layout']}{', read-only' if figures['read_only_mount'] else ''}, "
                f"--max-steps {figures['max_steps']})", ["figure", "value"],
                [[name, value] for name, value in figures.items()
                 if name not in ("train_photos", "test_photos", "layout", "read_only_mount", "max_steps")])


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/carvana-scale"),
                        help="where the data and the run go (default /tmp/carvana-scale)")
    parser.add_argument("--train-cars", type=int, default=TRAIN_CARS, help=f"training cars (default {TRAIN_CARS})")
    parser.add_argument("--test-photos", type=int, default=TEST_PHOTOS, help=f"test photos (default {TEST_PHOTOS})")
    parser.add_argument("--layout", choices=("zips", "extracted"), default="zips",
                        help="the data dir as Kaggle's zip files (default) or already extracted")
    parser.add_argument("--max-steps", type=int, default=40, help="the training's step budget (default 40)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="more flags for main.py, after --")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_arguments()
    main(arguments.root, arguments.train_cars, arguments.test_photos, arguments.layout, arguments.max_steps,
         [a for a in arguments.extra if a != "--"])
