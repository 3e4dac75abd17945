"""Accuracy on real photos: full-resolution Dice of the cpu preset on real Carvana cars it never saw.

Data: the real Kaggle training photos and masks of `../shared/fixtures/carvana-real512/` (96 cars,
resized to 512x512 by whoever published them). Cars are drawn with a seed into a training pool and a
held-out set that training never sees; the 16 views of a car are near-duplicates, so the split is
by car. Each variant is a Kaggle-layout data dir of its own in a temporary folder:

* **un-squashed** — photos resized back to Kaggle's 1918x1280 (INTER_CUBIC), masks up-sampled as
  probabilities (INTER_LINEAR on the 0/1 mask, then > 0.5, so their edges are smooth rather than
  3.75x2.5-pixel staircases) and saved as palette GIFs; the exact geometry a Kaggle user has.
* **native 512** — the same cars at their stored 512x512.

Both are trained through the real command line (`main.py run --preset cpu` in a subprocess, so the
figures are what a user gets); the run's own validation split is its own business, the held-out
cars are the truth. The submission is scored per image at full resolution
(`carvana.submission.score.score_submission`), giving the mean and the worst five.

Also measured: the *resolution ceiling* — the held-out true masks shrunk to the model's output
size and up-sampled back the way submissions are (`probabilities_to_mask`, bilinear then > 0.5),
then scored: what a perfect model at that output size would score. Shrunk two ways: as training
targets are made (`resize_mask`, 0/1), and as area fractions (soft edges). And the *transfer* figure: the same preset trained on the built-in synthetic sample
(`--dataset sample`), then `main.py predict` on the held-out real cars.

    .venv/bin/python bench/bench_accuracy.py            # 24 + 8 cars, the preset's epochs (~30 min on 2 cores)
    .venv/bin/python bench/bench_accuracy.py --quick    # 6 + 2 cars, 2 epochs, 128x64 input (a few minutes)
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, print_table, record  # noqa: E402
from bench.fixtures import write_palette_gif  # noqa: E402
from carvana.core.geometry import Size  # noqa: E402
from carvana.data.images import read_mask, resize_mask  # noqa: E402
from carvana.kaggle import rle  # noqa: E402
from carvana.kaggle import files as kl  # noqa: E402
from carvana.models.input_sizes import input_size_for_photos  # noqa: E402
from carvana.models.specs import model_geometry  # noqa: E402
from carvana.predict.postprocess import probabilities_to_mask  # noqa: E402
from carvana.run.config import preset  # noqa: E402
from carvana.run.fields import size as parse_size  # noqa: E402
from carvana.submission.score import score_submission  # noqa: E402

REAL512 = REPO_ROOT.parent / "shared" / "fixtures" / "carvana-real512"
KAGGLE_SIZE = Size(*kl.ORIGINAL_SIZE)
NATIVE_SIZE = Size(512, 512)  # the fixture's photos as stored
PHOTO_SIZES = {"unsquashed": KAGGLE_SIZE, "native512": NATIVE_SIZE}
JPEG_QUALITY = 95
PRESET = "cpu"
WORST = 5
BUILT_MARKER = ".bench-built"
VARIANTS = ("unsquashed", "native512", "transfer")
CEILING_LABELS = {"targets": "truth as 0/1 training targets and back", "soft": "truth as area fractions and back"}


@dataclass(frozen=True)
class Settings:
    """What one benchmark run trains: how many cars, how long, at what input size (None = the preset's)."""

    train_cars: int
    held_out_cars: int
    seed: int
    epochs: int | None = None
    input_size: Size | None = None
    sample_cars: int | None = None  # built-in sample's training cars for the transfer figure (None = its default)
    sample_image_size: Size | None = None
    crop: Size | None = None  # full-resolution training (--crop): random crops of the unresized photos
    model: str | None = None  # another model than the preset's (e.g. unet_resnet34), at the preset's input size
    max_time: str | None = None  # a training-time budget (main.py --max-time): the budget alone ends the run
    more_flags: tuple[str, ...] = ()  # any other main.py flags, e.g. ("--attention", "--upsample", "bilinear")

    def flags(self) -> list[str]:
        """main.py training flags that override the preset."""
        flags = ["--preset", PRESET, "--seed", str(self.seed)]
        if self.model is not None:  # at the preset's input size, not the model's own preset's
            flags += ["--model", self.model, *([] if self.input_size or self.crop else
                                               ["--input-size", str(preset(PRESET).input_size)])]
        if self.max_time is not None:
            flags += ["--max-time", self.max_time]
        if self.epochs is not None:
            flags += ["--epochs", str(self.epochs)]
        if self.input_size is not None:
            flags += ["--input-size", str(self.input_size)]
        if self.crop is not None:
            flags += ["--crop", str(self.crop)]
        flags += self.more_flags
        return flags

    def output_size(self, photos: Size) -> Size:
        """The size the model's output covers for `photos`: the photos' own with a crop, else the given
        input size's output, else the preset's fitted to their shape as a run fits it (`input_size_for_photos`)."""
        if self.crop is not None:
            return photos
        config = preset(PRESET)
        model = self.model or config.model
        size = self.input_size or input_size_for_photos(model, config.input_size, photos, drawn_for=KAGGLE_SIZE)
        return model_geometry(model, size).output_size


FULL = Settings(train_cars=24, held_out_cars=8, seed=0)
QUICK = Settings(train_cars=6, held_out_cars=2, seed=0, epochs=2, input_size=Size(128, 64),
                 sample_cars=3, sample_image_size=Size(480, 320))


@dataclass
class DataDir:
    """A Kaggle-layout data dir built for one variant, and the true masks of its test (held-out) photos."""

    path: Path
    truth_csv: Path
    photo_size: Size


@dataclass
class RunResult:
    """One trained model's figures on the held-out cars."""

    mean_dice: float
    worst: list[tuple[str, float]]
    images: int
    input_size: str = "?"
    output_size: str = "?"
    train_images: int = 0
    epochs: int = 0
    epoch_seconds: float = 0.0
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def train_images_per_s(self) -> float:
        return self.train_images * self.epochs / self.epoch_seconds if self.epoch_seconds else float("nan")


# --------------------------------------------------------------------------- data


def fixture_cars() -> list[str]:
    return sorted({kl.car_id(p.name) for p in (REAL512 / kl.TRAIN_DIR).glob("*.jpg")})


def pick_cars(settings: Settings) -> tuple[list[str], list[str]]:
    """(training pool, held-out cars): a seeded draw of distinct cars, so no view of a held-out car is trained on."""
    cars = fixture_cars()
    wanted = settings.train_cars + settings.held_out_cars
    if len(cars) < wanted:
        raise SystemExit(f"{REAL512}: {len(cars)} cars, the benchmark needs {wanted}")
    order = np.random.default_rng(settings.seed).permutation(len(cars))
    drawn = [cars[i] for i in order[:wanted]]
    return sorted(drawn[:settings.train_cars]), sorted(drawn[settings.train_cars:])


def views(cars: list[str]) -> list[str]:
    return [f"{car}_{view:02d}.jpg" for car in cars for view in range(1, kl.VIEWS_PER_CAR + 1)]


def unsquash_photo(source: Path, target: Path) -> None:
    photo = cv2.imread(str(source), cv2.IMREAD_COLOR)
    photo = cv2.resize(photo, tuple(KAGGLE_SIZE), interpolation=cv2.INTER_CUBIC)
    if not cv2.imwrite(str(target), photo, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {target}")


def unsquash_mask(mask: np.ndarray) -> np.ndarray:
    """A 0/1 mask at 1918x1280: bilinear on the 0/1 values then > 0.5, for smooth edges."""
    soft = cv2.resize(mask.astype(np.float32), tuple(KAGGLE_SIZE), interpolation=cv2.INTER_LINEAR)
    return (soft > 0.5).astype(np.uint8)


def write_rle_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(kl.SUBMISSION_HEADER)
        writer.writerows(rows)


def build_data_dir(root: Path, train: list[str], held_out: list[str], unsquashed: bool) -> DataDir:
    """`root/` in the Kaggle layout: train/ + train_masks/ + train_masks.csv of the training pool, test/ +
    sample_submission.csv of the held-out cars, and their true masks in `root.held_out_truth.csv`.

    A folder finished by an earlier run with the same cars (`--keep`) is reused as it is.
    """
    truth_csv = root.with_name(root.name + ".held_out_truth.csv")
    photo_size = KAGGLE_SIZE if unsquashed else NATIVE_SIZE
    marker = root / BUILT_MARKER
    cars = " ".join(train) + " | " + " ".join(held_out)
    if marker.is_file() and marker.read_text() == cars and truth_csv.is_file():
        return DataDir(root, truth_csv, photo_size)
    shutil.rmtree(root, ignore_errors=True)
    for folder in (kl.TRAIN_DIR, kl.MASKS_DIR, kl.TEST_DIR):
        (root / folder).mkdir(parents=True)
    source_photos, source_masks = REAL512 / kl.TRAIN_DIR, REAL512 / kl.MASKS_DIR

    def place(name: str, folder: str) -> str:
        """Writes the photo (and for training photos the GIF mask); returns the mask's RLE."""
        if unsquashed:
            unsquash_photo(source_photos / name, root / folder / name)
            mask = unsquash_mask(read_mask(source_masks / kl.mask_name(name)))
        else:
            shutil.copyfile(source_photos / name, root / folder / name)
            mask = read_mask(source_masks / kl.mask_name(name))
        if folder == kl.TRAIN_DIR:
            write_palette_gif(mask, root / kl.MASKS_DIR / kl.mask_name(name))
        return rle.encode(mask)

    write_rle_csv(root / kl.MASKS_CSV, [(name, place(name, kl.TRAIN_DIR)) for name in views(train)])
    truth = [(name, place(name, kl.TEST_DIR)) for name in views(held_out)]
    write_rle_csv(root / kl.SAMPLE_SUBMISSION_CSV, [(name, "1 1") for name, _ in truth])
    write_rle_csv(truth_csv, truth)
    marker.write_text(cars)
    return DataDir(root, truth_csv, photo_size)


# --------------------------------------------------------------------------- runs


def main_py(args: list[str], log: Path) -> tuple[str, float]:
    """Run `python main.py ARGS` as a user would; returns (its output, wall seconds). Exits on failure.

    A command that already succeeded in this work folder (`--keep`: its log and `.seconds` file are
    there, with the same arguments) is not run again; its log and time are returned.
    """
    seconds_file = log.with_suffix(".seconds")
    if seconds_file.is_file() and log.is_file():
        recorded_args, _, recorded_seconds = seconds_file.read_text().rpartition("\n")
        if recorded_args == " ".join(args):
            return log.read_text(errors="replace"), float(recorded_seconds)
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, str(REPO_ROOT / "main.py"), *args], cwd=REPO_ROOT, env=env,
                               stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    text = log.read_text(errors="replace")
    if code != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise SystemExit(f"main.py {' '.join(args)} failed with exit code {code} (log {log}):\n{tail}")
    seconds_file.write_text(f"{' '.join(args)}\n{seconds}")
    return text, seconds


EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) .* (\d+(?:\.\d+)?)s \(", re.MULTILINE)
MODEL_LINE = re.compile(r"input (\d+x\d+) -> output (\d+x\d+)")
DATA_LINE = re.compile(r"Data: (\d+) training images")


def parse_training(text: str, result: RunResult) -> None:
    """Input/output size, training images, epochs and seconds per epoch from the run's own log lines."""
    if (model := MODEL_LINE.search(text)) is not None:
        result.input_size, result.output_size = model.groups()
    if (data := DATA_LINE.search(text)) is not None:
        result.train_images = int(data.group(1))
    epochs = EPOCH_LINE.findall(text)
    result.epochs = len(epochs)
    result.epoch_seconds = sum(float(seconds) for _, _, seconds in epochs)


def score(submission: Path, data: DataDir) -> RunResult:
    report = score_submission(submission, data.truth_csv, data.photo_size)
    worst = sorted(report.per_image.items(), key=lambda item: item[1])[:WORST]
    return RunResult(mean_dice=report.mean_dice, worst=worst, images=report.n_images)


def train_and_score(data: DataDir, settings: Settings, work: Path, name: str) -> RunResult:
    """`main.py run` on the data dir (its test set = the held-out cars), then the submission scored."""
    out = work / f"out-{name}"
    text, seconds = main_py(["run", "--data-dir", str(data.path), *settings.flags(), "--run-name", name,
                             "--output-dir", str(out), "--log-dir", str(work / f"logs-{name}")],
                            work / f"{name}.log")
    result = score(out / "submit.csv.gz", data)
    parse_training(text, result)
    result.wall_seconds = seconds
    return result


def transfer(datas: dict[str, DataDir], settings: Settings, work: Path) -> dict[str, RunResult]:
    """Train on the built-in sample, then predict each real held-out set with that checkpoint and score it."""
    out, name = work / "out-sample", "sample"
    flags = ["train", "--dataset", "sample", "--data-dir", str(work / "sample-input"), *settings.flags(),
             "--run-name", name, "--output-dir", str(out), "--log-dir", str(work / "logs-sample")]
    if settings.sample_cars is not None:
        flags += ["--sample-cars", str(settings.sample_cars)]
    if settings.sample_image_size is not None:
        flags += ["--sample-image-size", str(settings.sample_image_size)]
    text, seconds = main_py(flags, work / "sample-train.log")
    checkpoint = out / "models" / name / "best.pt"
    results = {}
    for variant, data in datas.items():
        submission = work / f"transfer-{variant}.csv.gz"
        main_py(["predict", "--checkpoint", str(checkpoint), "--data-dir", str(data.path),
                 "--submission", str(submission)], work / f"transfer-{variant}.log")
        result = score(submission, data)
        parse_training(text, result)
        result.wall_seconds = seconds
        results[variant] = result
    return results


def resolution_ceiling(data: DataDir, output_size: Size) -> dict[str, tuple[float, float]]:
    """(mean, worst) Dice of the held-out true masks after a round trip through `output_size`: what a
    perfect model predicting at that size would score, for two kinds of perfect.

    "targets": shrunk as training targets are made (`resize_mask`: area share >= half, so 0/1), a model
    that reproduces its targets exactly. "soft": shrunk to area fractions (INTER_AREA on the 0/1 mask), a
    model whose edge pixels give the car's share of the pixel. Both are up-sampled back the way
    submissions are (`probabilities_to_mask`: bilinear, then > 0.5).
    """
    dice: dict[str, list[float]] = {"targets": [], "soft": []}
    height, width = data.photo_size.height, data.photo_size.width
    with open(data.truth_csv, newline="") as f:
        for row in csv.DictReader(f):
            truth = rle.decode(row["rle_mask"], height, width)
            small = {"targets": resize_mask(truth, output_size).astype(np.float32),
                     "soft": cv2.resize(truth.astype(np.float32), tuple(output_size), interpolation=cv2.INTER_AREA)}
            for kind, probabilities in small.items():
                back = probabilities_to_mask(probabilities, data.photo_size)
                total = int(truth.sum()) + int(back.sum())
                dice[kind].append(2.0 * int(np.logical_and(truth, back).sum()) / total if total else 1.0)
    return {kind: (float(np.mean(values)), float(np.min(values))) for kind, values in dice.items()}


# --------------------------------------------------------------------------- report


def main(quick: bool = False, settings: Settings | None = None, variants: tuple[str, ...] = VARIANTS,
         keep: Path | None = None) -> dict:
    settings = settings or (QUICK if quick else FULL)
    if not (REAL512 / kl.MASKS_CSV).is_file():
        print(f"\nAccuracy on real photos: skipped, {REAL512} is absent (real Carvana photos with masks)")
        return {"skipped": f"{REAL512} absent"}
    train, held_out = pick_cars(settings)
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bench-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"\nAccuracy on real photos: {len(train)} training cars, {len(held_out)} held-out cars "
          f"(seed {settings.seed}), work folder {work}", flush=True)
    try:
        datas = {"unsquashed": build_data_dir(work / "real-1918x1280", train, held_out, unsquashed=True),
                 "native512": build_data_dir(work / "real-512", train, held_out, unsquashed=False)}
        print(f"  data dirs built in {time.perf_counter() - started:.0f} s", flush=True)
        runs: dict[str, RunResult] = {}
        for variant in ("unsquashed", "native512"):
            if variant in variants:
                runs[variant] = train_and_score(datas[variant], settings, work, variant)
                print(f"  {variant}: mean Dice {runs[variant].mean_dice:.4f} "
                      f"({runs[variant].wall_seconds / 60:.1f} min)", flush=True)
        transfers = transfer(datas, settings, work) if "transfer" in variants else {}
        ceilings = {variant: resolution_ceiling(data, settings.output_size(data.photo_size)) for variant, data in datas.items()}
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return report(settings, quick, runs, transfers, ceilings, time.perf_counter() - started)


def report(settings: Settings, quick: bool, runs: dict[str, RunResult], transfers: dict[str, RunResult],
           ceilings: dict[str, dict[str, tuple[float, float]]], seconds: float) -> dict:
    photo = {variant: str(size) for variant, size in PHOTO_SIZES.items()}
    rows, figures = [], {"quick": quick, "preset": PRESET, "train_cars": settings.train_cars,
                         "held_out_cars": settings.held_out_cars, "seed": settings.seed,
                         "epochs": settings.epochs or preset(PRESET).epochs,
                         "output_size": str(settings.output_size(KAGGLE_SIZE)), "minutes_total": seconds / 60}
    labelled = [(f"trained on real cars, photos {photo[v]}", v, r) for v, r in runs.items()]
    labelled += [(f"trained on the built-in sample, scored on {photo[v]}", f"transfer_{v}", r)
                 for v, r in transfers.items()]
    for label, key, result in labelled:
        worst5 = float(np.mean([d for _, d in result.worst]))
        rows.append([label, f"{result.mean_dice:.4f}", f"{worst5:.4f}", f"{result.worst[0][1]:.4f}",
                     f"{result.input_size} -> {result.output_size}", f"{result.epoch_seconds / 60:.1f}",
                     f"{result.train_images_per_s:.1f}", f"{result.wall_seconds / 60:.1f}"])
        figures[key] = {"mean_dice": result.mean_dice, "worst5_mean_dice": worst5, "worst": result.worst,
                        "images": result.images, "input_size": result.input_size,
                        "output_size": result.output_size, "train_images": result.train_images,
                        "epochs_run": result.epochs, "train_minutes": result.epoch_seconds / 60,
                        "train_images_per_s": result.train_images_per_s,
                        "wall_minutes": result.wall_seconds / 60}
    for variant, kinds in ceilings.items():
        for kind, (mean, worst) in kinds.items():
            rows.append([f"ceiling ({CEILING_LABELS[kind]}), {photo[variant]}", f"{mean:.4f}", "", f"{worst:.4f}",
                         f"-> {settings.output_size(PHOTO_SIZES[variant])}", "", "", ""])
            figures[f"ceiling_{kind}_{variant}"] = {"mean_dice": mean, "worst_dice": worst}
    print_table(
        f"Accuracy on real photos{' (QUICK: tiny settings, not the real figures)' if quick else ''}: "
        f"preset {PRESET}{f' with --crop {settings.crop}' if settings.crop else ''}"
        f"{f' --model {settings.model}' if settings.model else ''}"
        f"{f' --max-time {settings.max_time}' if settings.max_time else ''}"
        f"{''.join(' ' + flag for flag in settings.more_flags)}, {settings.train_cars} "
        "training cars, Dice at full resolution on "
        f"{settings.held_out_cars} held-out cars ({settings.held_out_cars * kl.VIEWS_PER_CAR} images)",
        ["model", "mean Dice", "worst-5 mean", "worst", "input -> output", "train min", "train img/s", "wall min"],
        rows)
    print("  train min / img/s: the epochs' own time (training + the run's per-epoch validation pass); "
          "wall min: the whole main.py command")
    for label, key, result in labelled:
        print(f"  worst of {key}: " + ", ".join(f"{name} {d:.3f}" for name, d in result.worst))
    if settings.crop is not None:
        figures["crop"] = str(settings.crop)
    for name, value in (("model", settings.model), ("max_time", settings.max_time),
                        ("more_flags", " ".join(settings.more_flags) or None)):
        if value is not None:
            figures[name] = value
    parts = (settings.model, settings.max_time and f"budget{settings.max_time}",
             "".join(flag.lstrip("-") for flag in settings.more_flags),
             settings.train_cars != FULL.train_cars and not quick and f"{settings.train_cars}cars")
    suffix = "".join(f"_{part}" for part in parts if part)
    record("accuracy_real_photos" + (f"_crop{settings.crop}" if settings.crop else "") + suffix + ("_quick" if quick else ""),
           figures)
    return figures


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 + 2 cars, 2 epochs, 128x64 input: a smoke run")
    parser.add_argument("--train-cars", type=int, default=None, help="cars in the training pool (24)")
    parser.add_argument("--held-out-cars", type=int, default=None, help="cars never trained on (8)")
    parser.add_argument("--seed", type=int, default=None, help="which cars are drawn (0)")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--only", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="some variants only")
    parser.add_argument("--crop", type=parse_size, default=None, metavar="WxH", help=(
        "train at full resolution on WxH crops of the unresized photos (main.py --crop)"))
    parser.add_argument("--model", default=None, help="train this model instead of the preset's (main.py --model)")
    parser.add_argument("--max-time", default=None, metavar="DURATION", help=(
        "a training-time budget instead of the preset's epochs (main.py --max-time, e.g. 10m)"))
    parser.add_argument("--flags", type=shlex.split, default=[], metavar="'FLAGS'", help=(
        "other main.py training flags as one argument after '=', e.g. --flags='--attention --upsample bilinear'"))
    parser.add_argument("--keep", type=Path, default=None, help=(
        "work in this folder and keep it (data, logs); a second run there reuses what the first finished"))
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_arguments()
    base = QUICK if arguments.quick else FULL
    chosen = Settings(
        train_cars=arguments.train_cars or base.train_cars, held_out_cars=arguments.held_out_cars or base.held_out_cars,
        seed=base.seed if arguments.seed is None else arguments.seed, epochs=arguments.epochs or base.epochs,
        input_size=None if arguments.crop else base.input_size, sample_cars=base.sample_cars,
        sample_image_size=base.sample_image_size, crop=arguments.crop, model=arguments.model,
        max_time=arguments.max_time, more_flags=tuple(arguments.flags))
    main(arguments.quick, chosen, tuple(arguments.only), arguments.keep)
