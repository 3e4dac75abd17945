"""Post-processing writer: probability map -> 1918x1280 -> threshold -> RLE -> gzip row.

Rows per second at the model sizes 384x256 and 1024x1024:
- the seed's row (cv2.resize, > threshold, np.where RLE) and ours (`encode_row`), each on ONE
  core (serial loop, OpenCV limited to one thread), gzip included;
- the `SubmissionWriter` with 1 worker, with its default pool on this machine, and with 2 workers.
"rows/CPU-s" divides the rows by the process's CPU seconds: the rate per busy core.
Target: >= 150 rows/s on one core.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_rle import seed_rle_encode  # noqa: E402
from bench.common import print_table, record  # noqa: E402
from bench.fixtures import PHOTO_SIZE, probability_maps  # noqa: E402
from carvana.core.geometry import Size  # noqa: E402
from carvana.submission.writer import DEFAULT_COMPRESSLEVEL, SubmissionWriter, default_workers, encode_row  # noqa: E402

TARGET_ROWS_PER_S_PER_CORE = 150.0
MODEL_SIZES = (Size(384, 256), Size(1024, 1024))
BATCH = 8


def seed_row(name: str, probabilities: np.ndarray, original_size: Size, threshold: float = 0.5) -> bytes:
    """The seed's post-processing: cv2.resize (bilinear) to the photo size, > threshold, its RLE."""
    mask = cv2.resize(probabilities, tuple(original_size)) > threshold
    return f"{name},{seed_rle_encode(mask)}\n".encode()


def _rates(run, rows: int, repeat: int) -> tuple[float, float]:
    """Best (rows per wall second, rows per CPU second) over `repeat` runs of `run()`."""
    run()  # warm-up
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return rows / best_wall, rows / max(best_cpu, 1e-9)


def _serial(row_fn, maps: np.ndarray, rows: int):
    """One thread: make every row and compress it, as a single core would."""
    def run() -> None:
        compressor = zlib.compressobj(DEFAULT_COMPRESSLEVEL, zlib.DEFLATED, 31)  # 31: gzip container
        for i in range(rows):
            compressor.compress(row_fn(f"car_{i:05d}.jpg", maps[i % len(maps)], PHOTO_SIZE, 0.5))
        compressor.flush()
    return run


def _writer(maps: np.ndarray, rows: int, workers: int, folder: Path):
    names = [f"car_{i:05d}.jpg" for i in range(rows)]
    assert len(maps) >= BATCH

    def run() -> None:
        with SubmissionWriter(folder / "submit.csv.gz", PHOTO_SIZE, workers=workers) as writer:
            for start in range(0, rows, BATCH):
                chunk = names[start:start + BATCH]
                writer.add_batch(chunk, maps[:len(chunk)])  # a view: the writer's own copy is all that is timed
    return run


def main(quick: bool = False) -> dict:
    rows, repeat = (48, 2) if quick else (160, 3)
    pool = default_workers()
    figures: dict = {"rows_per_run": rows, "default_workers": pool, "target_rows_per_s_per_core": TARGET_ROWS_PER_S_PER_CORE}
    table = []
    threads_before = cv2.getNumThreads()
    with tempfile.TemporaryDirectory(prefix="bench-postprocess-") as tmp:
        for size in MODEL_SIZES:
            maps = probability_maps(size)
            assert seed_row("x", maps[0], PHOTO_SIZE) == encode_row("x", maps[0], PHOTO_SIZE, 0.5), \
                "the seed's row and ours agree on a mask off the image corners"
            key = f"{size.width}x{size.height}"
            cv2.setNumThreads(1)  # one core: OpenCV must not spread the resize over the others
            try:
                measured = {
                    "seed_1core": _rates(_serial(seed_row, maps, rows), rows, repeat),
                    "ours_1core": _rates(_serial(encode_row, maps, rows), rows, repeat),
                }
            finally:
                cv2.setNumThreads(threads_before)
            for workers in sorted({1, pool, 2}):
                measured[f"writer_{workers}w"] = _rates(_writer(maps, rows, workers, Path(tmp)), rows, repeat)
            for label, (wall, per_cpu) in measured.items():
                figures[f"{key}_{label}_rows_per_s"] = wall
                figures[f"{key}_{label}_rows_per_cpu_s"] = per_cpu
                table.append([key, label, wall, per_cpu, 1e3 / wall])
            figures[f"{key}_pass"] = figures[f"{key}_ours_1core_rows_per_s"] >= TARGET_ROWS_PER_S_PER_CORE
    print_table(
        f"Post-processing to gzip rows at {PHOTO_SIZE} (target >= {TARGET_ROWS_PER_S_PER_CORE:.0f} rows/s on one core; "
        f"writer default pool here: {pool} worker(s))",
        ["model size", "way", "rows/s", "rows/CPU-s", "ms/row"], table,
    )
    record("postprocess_writer", figures)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows per measurement")
    main(parser.parse_args().quick)
