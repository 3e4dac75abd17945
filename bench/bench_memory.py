"""Memory: peak RSS growth while streaming N predictions through PredictionsSaver into a gzip file.

Each size runs in its own subprocess, so the two runs do not share a peak. The child builds a few
384x256 float32 car-like probability maps, notes its resident memory (VmRSS), streams N maps in
batches of 8 (each shifted by a few random pixels, as a network's outputs differ) through the
`PredictionsSaver` callback into a temp submit.csv.gz, and reports its peak (VmHWM) minus the
memory it started from (VmRSS after the writer and its threads were created).

Target (issue 6): memory stays flat however many test images, growth <= 50 MB. Two figures:
- growth with N: peak at 20,000 rows minus peak at 1,000 rows. If the submission or anything per
  row were kept, this would scale with N (20x the rows);
- start to peak at each N: everything the streaming costs above the idle process (queued batches,
  thread stacks, the allocator's heaps), which must also stay under 50 MB.

`--ensemble`: the same two figures for `predict` with an ensemble of two models of different
covered sizes (a 64x64 and a 128x64 slim UNet1024, untrained, fp32 on the CPU, no flip TTA), whose
mean is taken at the photos' size 1918x1280 (`EnsembleForward.at_photo_size`). The child builds
the models and one batch of 8 synthetic car photos per input geometry (uint8, as the test loader
gives them), then runs `Predictor(ensemble).predict` over N rows (each batch the same photos rolled
by a few random pixels, so the maps differ) into a `PredictionsSaver` at 1918x1280 writing a temp
submit.csv.gz. The baseline (VmRSS) is taken when the loader is first asked for a batch: after the
models, the saver, its writer thread and the gzip stream exist. Growth with N: peak at 2,000 rows
minus peak at 200 (quick: 500 and 100); if anything per row were kept it would scale with N. Start
to peak has no per-row part either, but at the photos' size it is a few batches of 8 full-size
float32 maps (8 x 1918 x 1280 x 4 B = 75 MiB each): in the forward pass, the running sum and the
up-sampling's temporaries; in the saver, its
copy of the batch and the batches queued for the writer. It is therefore reported in such batches,
not held to the 50 MB target.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, record  # noqa: E402

if TYPE_CHECKING:
    import torch

    from carvana.core.geometry import Geometry

TARGET_GROWTH_MB = 50.0
MAP_SIZE = (384, 256)
BATCH = 8
ENSEMBLE_INPUTS = ((64, 64), (128, 64))  # the members' input sizes: two covered sizes, so the mean is at the photos' size


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(rows: int) -> dict:
    """Run in a fresh process: stream `rows` maps, return the memory figures."""
    import numpy as np
    import torch

    from bench.fixtures import PHOTO_SIZE, probability_maps
    from carvana.core.geometry import Size
    from carvana.predict.hooks import PredictState
    from carvana.submission.predictions_saver import PredictionsSaver

    templates = torch.from_numpy(probability_maps(Size(*MAP_SIZE), BATCH))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        path = Path(tmp) / "submit.csv.gz"
        saver = PredictionsSaver(path, PHOTO_SIZE)
        state = PredictState(model=torch.nn.Identity(), total=rows)
        # The writer, its threads and the gzip stream exist before the baseline is taken.
        saver.on_predict_begin(state)
        start_kb = _status_kb("VmRSS")
        started = time.perf_counter()
        for first in range(0, rows, BATCH):
            count = min(BATCH, rows - first)
            dy, dx = rng.integers(-6, 7, size=2)
            state.probabilities = torch.roll(templates[:count], shifts=(int(dy), int(dx)), dims=(1, 2))
            state.names = [f"car{i:06d}_01.jpg" for i in range(first, first + count)]
            state.done += count
            saver.on_predict_batch_end(state)
        saver.on_predict_end(state)
        seconds = time.perf_counter() - started
        peak_kb = _status_kb("VmHWM")
        size = path.stat().st_size
    return {"rows": saver.rows_written, "seconds": seconds, "start_mb": start_kb / 1024, "peak_mb": peak_kb / 1024,
            "growth_mb": (peak_kb - start_kb) / 1024, "file_mb": size / 2**20}


def main(quick: bool = False) -> dict:
    """Both benchmarks (what `make bench` runs): the saver alone, then an ensemble's prediction."""
    return {"streaming": main_streaming(quick), "ensemble": main_ensemble(quick)}


def run_child(rows: int, figures: dict, *mode: str) -> dict:
    """One measurement in a fresh process (`--child ROWS`, after the `mode` flags); its figures are also
    merged into `figures` as ROWS_key."""
    done = subprocess.run([sys.executable, __file__, *mode, "--child", str(rows)], capture_output=True, text=True,
                          check=False)
    what = " ".join(["memory child", *mode])
    if done.returncode != 0:
        raise RuntimeError(f"{what} for {rows} rows failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rows"] != rows:
        raise RuntimeError(f"{what} wrote {result['rows']} rows, expected {rows}")
    for key, value in result.items():
        figures[f"{rows}_{key}"] = value
    return result


def main_streaming(quick: bool = False) -> dict:
    """The saver alone: each N in its own process, the figures recorded as memory_streaming."""
    sizes = (1000, 5000) if quick else (1000, 20000)
    figures: dict = {"target_growth_mb": TARGET_GROWTH_MB, "map_size": f"{MAP_SIZE[0]}x{MAP_SIZE[1]}"}
    table = []
    for rows in sizes:
        result = run_child(rows, figures)
        table.append([rows, result["start_mb"], result["peak_mb"], result["growth_mb"], result["file_mb"],
                      rows / result["seconds"]])
    figures["max_growth_mb"] = max(figures[f"{rows}_growth_mb"] for rows in sizes)
    figures["growth_with_rows_mb"] = figures[f"{sizes[-1]}_peak_mb"] - figures[f"{sizes[0]}_peak_mb"]
    figures["pass"] = max(figures["max_growth_mb"], figures["growth_with_rows_mb"]) <= TARGET_GROWTH_MB
    print_table(
        f"Memory streaming {figures['map_size']} predictions through PredictionsSaver (one process per N; "
        f"target growth <= {TARGET_GROWTH_MB:g} MB)",
        ["rows", "RSS at start MB", "peak MB", "start to peak MB", "gzip MB", "rows/s"], table,
    )
    print(f"  peak at {sizes[-1]:,} rows - peak at {sizes[0]:,} rows: {figures['growth_with_rows_mb']:.1f} MB")
    record("memory_streaming", figures)
    return figures


def synthetic_photo_batches(geometries: tuple["Geometry", ...], count: int = BATCH) -> tuple["torch.Tensor", ...]:
    """One (count, 3, H_in, W_in) uint8 batch per geometry: `count` car-like photos (a bright silhouette
    on a darker background, with noise) at 1918x1280, each brought to the geometry's input as the test
    loader brings a photo (resized to the covered size, mirror-padded)."""
    import numpy as np
    import torch

    from bench.common import car_like_mask
    from bench.fixtures import PHOTO_SIZE
    from carvana.data.datasets import photo_input
    from carvana.data.images import resize_image

    rng = np.random.default_rng(1)
    inputs: list[list["torch.Tensor"]] = [[] for _ in geometries]
    for seed in range(count):
        car = car_like_mask(PHOTO_SIZE.width, PHOTO_SIZE.height, seed=seed)
        photo = (60 + 130 * car)[:, :, None] + rng.integers(0, 40, size=(*car.shape, 3), dtype=np.uint8)
        for kind, geometry in enumerate(geometries):
            inputs[kind].append(photo_input(resize_image(photo, geometry.covered_size), geometry))
    return tuple(torch.stack(batch) for batch in inputs)


class RolledPhotoLoader:
    """`rows` test photos in batches of `BATCH`: the loader's `(inputs per geometry, file names)`, each batch
    the same photos rolled by a few random pixels. Notes the process's VmRSS and the time when it is first
    asked for a batch, i.e. after `Predictor.predict` began its callbacks (the saver's writer exists)."""

    def __init__(self, photos: tuple["torch.Tensor", ...], rows: int):
        self.photos = photos
        self.rows = rows
        self.start_kb = 0
        self.started = 0.0

    def __iter__(self) -> Iterator[tuple[tuple["torch.Tensor", ...], list[str]]]:
        import numpy as np
        import torch

        rng = np.random.default_rng(0)
        self.start_kb = _status_kb("VmRSS")
        self.started = time.perf_counter()
        for first in range(0, self.rows, BATCH):
            count = min(BATCH, self.rows - first)
            dy, dx = (int(shift) for shift in rng.integers(-3, 4, size=2))
            inputs = tuple(torch.roll(batch[:count], shifts=(dy, dx), dims=(2, 3)) for batch in self.photos)
            yield inputs, [f"car{i:06d}_01.jpg" for i in range(first, first + count)]


def ensemble_child(rows: int) -> dict:
    """Run in a fresh process: predict `rows` photos with a 2-model ensemble of different covered sizes
    into a PredictionsSaver at the photos' size, return the memory figures."""
    import torch

    from bench.fixtures import PHOTO_SIZE
    from carvana.core.geometry import Size
    from carvana.predict.ensemble import EnsembleForward, EnsembleMember
    from carvana.predict.predictor import Predictor
    from carvana.run.config import Config
    from carvana.submission.predictions_saver import PredictionsSaver

    members = []
    for seed, (width, height) in enumerate(ENSEMBLE_INPUTS):
        config = Config(preset="cpu", model="unet1024", input_size=Size(width, height), width=0.125, amp="off",
                        device="cpu")
        torch.manual_seed(seed)
        model = config.new_model()
        forward = Predictor.for_config(config, model, progress=False).forward
        members.append(EnsembleMember(Path(f"model-{width}x{height}.pt"), forward, tta=False))
    ensemble = EnsembleForward(members, PHOTO_SIZE)
    if not ensemble.at_photo_size:
        raise RuntimeError("the benchmark's ensemble must average at the photos' size")
    loader = RolledPhotoLoader(synthetic_photo_batches(ensemble.input_geometries), rows)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        path = Path(tmp) / "submit.csv.gz"
        saver = PredictionsSaver(path, PHOTO_SIZE)
        Predictor(ensemble, tta=False, progress=False).predict(loader, callbacks=[saver])  # type: ignore[arg-type]
        seconds = time.perf_counter() - loader.started
        peak_kb = _status_kb("VmHWM")
        size = path.stat().st_size
    return {"rows": saver.rows_written, "seconds": seconds, "start_mb": loader.start_kb / 1024,
            "peak_mb": peak_kb / 1024, "growth_mb": (peak_kb - loader.start_kb) / 1024, "file_mb": size / 2**20}


def main_ensemble(quick: bool = False) -> dict:
    """The `--ensemble` benchmark: each N in its own process, the figures recorded as memory_streaming_ensemble."""
    from bench.fixtures import PHOTO_SIZE

    sizes = (100, 500) if quick else (200, 2000)
    batch_mb = BATCH * PHOTO_SIZE.width * PHOTO_SIZE.height * 4 / 2**20
    figures: dict = {"target_growth_mb": TARGET_GROWTH_MB, "photo_size": str(PHOTO_SIZE), "batch": BATCH,
                     "photo_batch_mb": batch_mb,
                     "models": " + ".join(f"unet1024 width 0.125 at {w}x{h}" for w, h in ENSEMBLE_INPUTS)}
    table = []
    for rows in sizes:
        result = run_child(rows, figures, "--ensemble")
        table.append([rows, result["start_mb"], result["peak_mb"], result["growth_mb"],
                      result["growth_mb"] / batch_mb, rows / result["seconds"]])
    figures["max_growth_mb"] = max(figures[f"{rows}_growth_mb"] for rows in sizes)
    figures["growth_with_rows_mb"] = figures[f"{sizes[-1]}_peak_mb"] - figures[f"{sizes[0]}_peak_mb"]
    figures["pass"] = figures["growth_with_rows_mb"] <= TARGET_GROWTH_MB
    print_table(
        f"Memory streaming a 2-model ensemble (64x64 + 128x64, averaged at {PHOTO_SIZE}) through PredictionsSaver "
        f"(one process per N; target growth with N <= {TARGET_GROWTH_MB:g} MB)",
        ["rows", "RSS at start MB", "peak MB", "start to peak MB", f"in {batch_mb:.0f} MB photo batches", "rows/s"],
        table,
    )
    print(f"  peak at {sizes[-1]:,} rows - peak at {sizes[0]:,} rows: {figures['growth_with_rows_mb']:.1f} MB")
    record("memory_streaming_ensemble", figures)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1,000 vs 5,000 rows instead of 1,000 vs 20,000 (with --ensemble: 100 vs 500 instead "
                             "of 200 vs 2,000)")
    parser.add_argument("--ensemble", action="store_true",
                        help="predict with a 2-model ensemble of different sizes, averaged at the photos' size")
    parser.add_argument("--child", type=int, metavar="ROWS", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child is not None:
        print(json.dumps((ensemble_child if arguments.ensemble else child)(arguments.child)))
    elif arguments.ensemble:
        main_ensemble(arguments.quick)
    else:
        main_streaming(arguments.quick)
