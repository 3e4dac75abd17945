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
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, record  # noqa: E402

TARGET_GROWTH_MB = 50.0
MAP_SIZE = (384, 256)
BATCH = 8


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
    sizes = (1000, 5000) if quick else (1000, 20000)
    figures: dict = {"target_growth_mb": TARGET_GROWTH_MB, "map_size": f"{MAP_SIZE[0]}x{MAP_SIZE[1]}"}
    table = []
    for rows in sizes:
        done = subprocess.run([sys.executable, __file__, "--child", str(rows)], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory child for {rows} rows failed:\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if result["rows"] != rows:
            raise RuntimeError(f"memory child wrote {result['rows']} rows, expected {rows}")
        for key, value in result.items():
            figures[f"{rows}_{key}"] = value
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 vs 5,000 rows instead of 1,000 vs 20,000")
    parser.add_argument("--child", type=int, metavar="ROWS", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child is not None:
        print(json.dumps(child(arguments.child)))
    else:
        main(arguments.quick)
