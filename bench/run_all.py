"""Run every benchmark in order, print their tables, and record the figures in bench/results.json.

    .venv/bin/python bench/run_all.py            # full (about 35 minutes on 2 cores, most of it "accuracy")
    .venv/bin/python bench/run_all.py --quick    # smaller samples, for a smoke run (a few minutes)
    .venv/bin/python bench/run_all.py --only rle postprocess

Benchmarks compare the ways side by side in the same run, so a busy machine slows both; the
absolute figures still depend on it (the machine is recorded with every figure).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, machine  # noqa: E402

# Speed and memory first (RLE, post-processing, loading, train step, pipeline, memory, 1 vs 2
# processes under torchrun), then the accuracy on real photos, which trains models and takes longest.
BENCHMARKS = ("rle", "postprocess", "loading", "train_step", "pipeline", "memory", "ddp", "accuracy")


def run(names: list[str], quick: bool) -> dict[str, dict]:
    info = machine()
    print("Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + (" (quick)" if quick else ""))
    results = {}
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        takes_quick = "quick" in inspect.signature(module.main).parameters
        started = time.perf_counter()
        results[name] = module.main(quick=quick) if takes_quick else module.main()
        print(f"  [{name}: {time.perf_counter() - started:.0f} s]")
    print(f"\nFigures recorded in {RESULTS}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the carvana benchmarks.")
    parser.add_argument("--quick", action="store_true", help="smaller samples (each benchmark's --quick)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)})")
    arguments = parser.parse_args()
    run(list(arguments.only or BENCHMARKS), arguments.quick)


if __name__ == "__main__":
    main()
