"""Shared helpers for the benchmarks: timing, a printed table, and bench/results.json."""
from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results.json"
REPO_ROOT = BENCH_DIR.parent
REAL_TEST_PHOTOS = REPO_ROOT.parent / "shared" / "fixtures" / "carvana-real" / "test"


def best_of(fn: Callable[[], Any], repeat: int = 5, number: int = 1) -> float:
    """Best mean seconds per call over `repeat` rounds of `number` calls (the least disturbed round)."""
    fn()  # warm-up: caches, lazy imports, allocator
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def machine() -> dict[str, Any]:
    import torch

    info = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  " + "  ".join(str(c).rjust(w) if j else str(c).ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def record(name: str, figures: dict[str, Any]) -> None:
    """Merge one benchmark's figures into bench/results.json, stamped with the machine and time."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[name] = {"figures": figures, "machine": machine(),
                     "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def car_like_mask(width: int = 1918, height: int = 1280, seed: int = 0):
    """A filled car-ish silhouette (body, cabin, wheels) at full resolution, uint8 0/1."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    cx, cy = width // 2 + int(rng.integers(-60, 60)), int(height * 0.55)
    cv2.ellipse(mask, (cx, cy), (int(width * 0.38), int(height * 0.16)), 0, 0, 360, 1, -1)
    cv2.ellipse(mask, (cx - 40, cy - int(height * 0.12)), (int(width * 0.2), int(height * 0.12)), 0, 180, 360, 1, -1)
    for dx in (-0.25, 0.25):
        cv2.circle(mask, (cx + int(width * dx), cy + int(height * 0.12)), int(height * 0.08), 1, -1)
    return mask
