"""Several processes (torchrun): training and prediction images/s of 1 process vs 2, on the CPU (gloo).

Every setting is one `torchrun --standalone --nproc_per_node=N` launch (`sys.executable -m
torch.distributed.run`) of this file as a driver: each process joins the process group as
`main.py` does (`carvana.core.distributed.start`), builds the run's loaders (decoded cache,
DistributedSampler, sharded validation), `CarvanaClassifier` (DistributedDataParallel) and
`Predictor`, and rank 0 times, after one untimed warm-up epoch and prediction:
- an epoch (training pass + sharded validation with the Dice gathered), over several epochs;
- a validation pass alone, so that the training pass is the epoch less it;
- `pipeline.predict.predict_test_set`: each process predicts its share of the test set into a part file,
  rank 0 merges the parts into `submit.csv.gz` and validates it (one process writes it directly).
Start-up (imports, rendezvous, model build, cache) is left out of those; the README's CPU smoke
test is also timed as whole `torchrun ... main.py` commands, start-up included.

The settings get the same CPU threads in all: 1 process x 2 torch threads against 2 processes x
1 thread (OMP_NUM_THREADS). `--batch-size` is per process, so 2 processes are timed with half the
batch (the same global batch and optimiser steps as 1 process); the full run adds 2 processes with
the same batch (twice the global batch, half the steps) and 1 process x 1 thread for reference.
Each setting's figures are the best over its launches, interleaved, as the box is shared.

    python bench/bench_ddp.py [--quick]
    python bench/bench_ddp.py --gpu [--gpus N]   # UNet1024 at 1024x1024 on 1 GPU vs N GPUs (nccl)

The GPU path prints "no CUDA device: skipped" and records nothing without CUDA.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, print_table, record  # noqa: E402
from carvana.core.geometry import Size  # noqa: E402
from carvana.train.callbacks import Callback, TrainState  # noqa: E402

# The tiny workload of the CPU smoke test (README "Scaling out"), and a larger one at the cpu
# preset's coarse input size; `repeats`: launches of each setting, interleaved.
QUICK = {"train_cars": 4, "test_cars": 2, "photo_size": "192x128", "input_size": "128x64", "epochs": 2, "rounds": 1,
         "repeats": 1}
FULL = {"train_cars": 8, "test_cars": 4, "photo_size": "384x256", "input_size": "192x128", "epochs": 2, "rounds": 2,
        "repeats": 2}
# The README's CPU smoke test, timed as whole commands (its sample: `train_cars` cars, 6 test cars).
SMOKE_TEST = {"train_cars": 4, "photo_size": "192x128", "input_size": "128x64"}
CPU_THREADS = 2  # the cores of every setting together
CPU_BATCH = 8  # the cpu preset's batch: the global batch of the 1-process settings
GPU_BATCH = 8  # per GPU, as --batch-size is per process
GPU_WORKERS = 4  # loader workers per process
LAUNCH_TIMEOUT_S = 1800


@dataclass(frozen=True)
class DriverSpec:
    """What one torchrun launch of the driver trains and predicts, and where it writes rank 0's timings."""

    data_dir: str
    output_dir: str
    result: str
    preset: str
    device: str
    input_size: str
    batch_size: int
    workers: int
    epochs: int  # timed epochs, after one warm-up epoch
    rounds: int  # timed predictions of the test set (the best one counts), after one warm-up


@dataclass(frozen=True)
class Setting:
    """One launch: `processes` processes of `threads` torch threads each, `batch_size` per process."""

    processes: int
    threads: int
    batch_size: int

    @property
    def label(self) -> str:
        return (f"{self.processes} process{'es' if self.processes > 1 else ''} x {self.threads} "
                f"thread{'s' if self.threads > 1 else ''}, batch {self.batch_size}"
                + (f" each (global {self.processes * self.batch_size})" if self.processes > 1 else ""))


# --------------------------------------------------------------------------- the driver (one per process)


class _EpochClock(Callback):
    """Notes the time (on this process) when training begins and when each epoch ends (after its validation)."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_begin(self, state: TrainState) -> None:
        self.marks.append(time.perf_counter())

    def on_epoch_end(self, state: TrainState) -> None:
        self.marks.append(time.perf_counter())

    def epoch_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def drive(spec: DriverSpec) -> None:
    """One process of a launch: join the group, train and predict as the pipeline does, rank 0 writes the timings."""
    import torch

    from carvana.core import distributed
    from carvana.core.device import select_device
    from carvana.data.datasets import make_test_loader, make_train_loader, make_valid_loader, open_training_cache
    from carvana.data.layout import load_carvana_data
    from carvana.data.split import split_by_car
    from carvana.pipeline.predict import predict_test_set
    from carvana.predict.predictor import Predictor
    from carvana.run.config import preset
    from carvana.train.classifier import CarvanaClassifier

    logging.getLogger("carvana").setLevel(logging.WARNING)  # the pipeline's progress lines are not the figures
    device = select_device(spec.device)
    ranks = distributed.start(device.type)
    try:
        config = preset(spec.preset).replace(
            device=spec.device, input_size=Size.parse(spec.input_size), batch_size=spec.batch_size,
            workers=spec.workers, epochs=spec.epochs + 1, coarse_epochs=0,
            output_dir=Path(spec.output_dir), data_dir=Path(spec.data_dir))
        data = load_carvana_data(Path(spec.data_dir))
        split = split_by_car(data.train_names, config.validation_size, config.sample_size, config.seed)
        geometry = config.geometry
        if not ranks.is_main:
            distributed.barrier()  # rank 0 builds the decoded cache (or finds it), the others then read it
        cache = open_training_cache(data, [*split.train, *split.valid], geometry, config).cache
        if ranks.is_main:
            distributed.barrier()
        train_loader = make_train_loader(data, split.train, geometry, config, cache=cache)
        valid_loader = make_valid_loader(data, split.valid, geometry, config, cache=cache, shard=True)
        classifier = CarvanaClassifier(config, progress=False)

        classifier.train(train_loader, valid_loader, epochs=1)  # warm-up: kernels picked, buffers allocated
        clock = _EpochClock()
        distributed.barrier()
        classifier.train(train_loader, valid_loader, epochs=1 + spec.epochs, callbacks=[clock])
        epochs = clock.epoch_seconds()
        validations = []
        for _ in range(spec.epochs):
            distributed.barrier()
            _synchronize(classifier.device)
            started = time.perf_counter()
            classifier.validate(valid_loader)  # ends with a gather: every process's share is done
            validations.append(time.perf_counter() - started)

        predictor = Predictor(classifier.forward, tta=config.tta, progress=False)
        warm = make_test_loader(data.test_image_paths()[:config.batch_size], geometry, config)
        predictor.predict(warm, tta=config.tta)
        submission = Path(spec.output_dir) / f"submit-{ranks.world_size}.csv.gz"
        predictions = []
        for _ in range(spec.rounds):
            distributed.barrier()
            _synchronize(classifier.device)
            started = time.perf_counter()
            rows = predict_test_set(predictor, config, data, submission)
            distributed.barrier()  # the others wait for rank 0's merge: the submission is there for all
            predictions.append(time.perf_counter() - started)
        if ranks.is_main:
            Path(spec.result).write_text(json.dumps({
                "world_size": ranks.world_size, "torch_threads": torch.get_num_threads(), "device": str(device),
                "precision": classifier.forward.precision.name, "train_images": len(split.train),
                "valid_images": len(split.valid), "test_images": rows, "steps_per_epoch": len(train_loader),
                "epoch_s": epochs, "validation_s": validations, "predict_s": predictions,
                "tta": config.tta, "mask_cleanup": config.mask_cleanup,
            }))
    finally:
        distributed.stop()


# --------------------------------------------------------------------------- the launches


def _torchrun(processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]


def _environment(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO_ROOT)}


def _run(command: list[str], threads: int, cwd: Path) -> float:
    """Run `command` to its end; its wall seconds. SystemExit with its output if it fails."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=_environment(threads), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)}: exit code {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def launch(setting: Setting, spec: DriverSpec, work: Path, attempt: int = 0) -> dict[str, Any]:
    """One torchrun launch of the driver: rank 0's timings and the launch's wall seconds (`launch_s`)."""
    spec = replace(spec, batch_size=setting.batch_size, result=str(
        work / f"result-{setting.processes}x{setting.threads}-b{setting.batch_size}-{attempt}.json"))
    wall = _run([*_torchrun(setting.processes), str(Path(__file__).resolve()), "--driver", json.dumps(asdict(spec))],
                setting.threads, work)
    return {**json.loads(Path(spec.result).read_text()), "launch_s": wall}


def summary(setting: Setting, launches: list[dict[str, Any]]) -> dict[str, Any]:
    """A setting's images/s from its launches: each measure's least disturbed time over every launch
    (the box is shared), the training pass being the best epoch less the best validation pass."""
    first = launches[0]
    epoch = min(s for timed in launches for s in timed["epoch_s"])
    validation = min(s for timed in launches for s in timed["validation_s"])
    predict = min(s for timed in launches for s in timed["predict_s"])
    train = max(epoch - validation, 1e-9)
    return {
        "setting": setting.label, "processes": setting.processes, "threads_per_process": first["torch_threads"],
        "batch_per_process": setting.batch_size, "steps_per_epoch": first["steps_per_epoch"],
        "launches": len(launches),
        "train_images_per_s": first["train_images"] / train,
        "epoch_images_per_s": first["train_images"] / epoch,
        "validate_images_per_s": first["valid_images"] / validation,
        "predict_images_per_s": first["test_images"] / predict,
        "epoch_s": epoch, "validation_s": validation, "predict_s": predict,
        "launch_wall_s": min(timed["launch_s"] for timed in launches),
        "train_images": first["train_images"], "valid_images": first["valid_images"],
        "test_images": first["test_images"], "precision": first["precision"], "device": first["device"],
        "tta": first["tta"], "mask_cleanup": first["mask_cleanup"],
    }


def measure(settings: list[Setting], spec: DriverSpec, work: Path, repeats: int) -> list[dict[str, Any]]:
    """`repeats` launches of each setting, interleaved (A B A B ...) so that a busy spell of the box
    falls on all of them, summarised per setting."""
    launches: dict[Setting, list[dict[str, Any]]] = {setting: [] for setting in settings}
    for attempt in range(repeats):
        for setting in settings:
            launches[setting].append(launch(setting, spec, work, attempt))
    return [summary(setting, launches[setting]) for setting in settings]


def whole_command(setting: Setting, work: Path, attempt: int = 0) -> float:
    """Wall seconds of the README's CPU smoke test (`torchrun ... main.py`, `SMOKE_TEST`) with `setting`,
    in `work`, where the sample is already fetched."""
    name = f"ddp-{setting.processes}x{setting.threads}-b{setting.batch_size}-{attempt}"
    return _run([*_torchrun(setting.processes), str(REPO_ROOT / "main.py"), "--dataset", "sample",
                 "--sample-cars", str(SMOKE_TEST["train_cars"]), "--sample-image-size", SMOKE_TEST["photo_size"],
                 "--preset", "cpu", "--device", "cpu", "--input-size", SMOKE_TEST["input_size"], "--epochs", "2",
                 "--batch-size", str(setting.batch_size), "--workers", "0", "--run-name", name,
                 "--output-dir", f"output-{name}", "--log-dir", f"logs-{name}"], setting.threads, work)


def _sample(data_dir: Path, train_cars: int, test_cars: int, size: Size) -> None:
    from carvana.sample.dataset import generate_sample_dataset

    generate_sample_dataset(data_dir, train_cars=train_cars, test_cars=test_cars, size=size, progress=False)


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "unknown"


# --------------------------------------------------------------------------- CPU


def main(quick: bool = False) -> dict:
    """1 vs 2 processes on the CPU (gloo), the same threads in all."""
    workload = QUICK if quick else FULL
    settings = [Setting(1, CPU_THREADS, CPU_BATCH), Setting(2, 1, CPU_BATCH // 2)]
    if not quick:
        settings += [Setting(2, 1, CPU_BATCH), Setting(1, 1, CPU_BATCH)]
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        work = Path(tmp)
        _sample(work / "data", workload["train_cars"], workload["test_cars"], Size.parse(workload["photo_size"]))
        spec = DriverSpec(data_dir=str(work / "data"), output_dir=str(work / "output"), result="", preset="cpu",
                          device="cpu", input_size=workload["input_size"], batch_size=CPU_BATCH, workers=0,
                          epochs=workload["epochs"], rounds=workload["rounds"])
        rows = measure(settings, spec, work, workload["repeats"])
        # The README's CPU smoke test as whole commands, start-up included, interleaved as above; the
        # sample is fetched first so that every command finds it.
        smoke = work / "smoke"
        smoke.mkdir()
        _run([sys.executable, str(REPO_ROOT / "main.py"), "fetch", "--dataset", "sample", "--sample-cars",
              str(SMOKE_TEST["train_cars"]), "--sample-image-size", SMOKE_TEST["photo_size"]], CPU_THREADS, smoke)
        walls: dict[str, list[float]] = {s.label: [] for s in settings[:2]}
        for attempt in range(workload["repeats"]):
            for setting in settings[:2]:
                walls[setting.label].append(whole_command(setting, smoke, attempt))
        commands = {label: min(seconds) for label, seconds in walls.items()}
    load_after = _load()

    base = rows[0]
    for row in rows:
        for key in ("train", "predict"):
            row[f"{key}_x_1_process"] = row[f"{key}_images_per_s"] / base[f"{key}_images_per_s"]
    figures: dict[str, Any] = {
        "workload": {**workload, "preset": "cpu", "loader_workers": 0,
                     "train_images": base["train_images"], "valid_images": base["valid_images"],
                     "test_images": base["test_images"], "precision": base["precision"],
                     "tta": base["tta"], "mask_cleanup": base["mask_cleanup"]},
        "load_average_before": load_before, "load_average_after": load_after,
        "settings": rows, "whole_command_s": commands,
    }
    print_table(
        f"DDP on the CPU (gloo): cpu preset at {workload['input_size']}, {base['precision']}, "
        f"{base['train_images']} training / {base['valid_images']} validation / {base['test_images']} test photos "
        f"of {workload['photo_size']}, 0 loader workers; best of {workload['repeats']} launch(es) x "
        f"{workload['epochs']} epochs / {workload['rounds']} prediction(s) after a warm-up; load average "
        f"{load_before} before, {load_after} after",
        ["setting", "steps/epoch", "train img/s", "x", "epoch img/s", "validate img/s", "predict img/s", "x",
         "launch s"],
        [[r["setting"], r["steps_per_epoch"], r["train_images_per_s"], r["train_x_1_process"],
          r["epoch_images_per_s"], r["validate_images_per_s"], r["predict_images_per_s"], r["predict_x_1_process"],
          r["launch_wall_s"]] for r in rows],
    )
    print_table(f"Whole command: the README's CPU smoke test, torchrun ... main.py --dataset sample --sample-cars "
                f"{SMOKE_TEST['train_cars']} --sample-image-size {SMOKE_TEST['photo_size']} --input-size "
                f"{SMOKE_TEST['input_size']} --epochs 2 (start-up, scoring and prediction included; best of "
                f"{workload['repeats']})",
                ["setting", "wall s"], [[label, seconds] for label, seconds in commands.items()])
    record("ddp_cpu", figures)
    return figures


# --------------------------------------------------------------------------- GPU


def main_gpu(gpus: int | None = None, train_cars: int = 16, test_cars: int = 16, epochs: int = 2) -> dict:
    """UNet1024 at 1024x1024 on 1 GPU vs `gpus` (default all) under torchrun (nccl), `GPU_BATCH` per GPU;
    scaling efficiency = images/s on N GPUs / (N x images/s on 1)."""
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return {}
    count = gpus or torch.cuda.device_count()
    cores = os.cpu_count() or 1
    settings = [Setting(1, max(1, cores // 2), GPU_BATCH)]
    if count > 1:
        settings.append(Setting(count, max(1, cores // (2 * count)), GPU_BATCH))
    with tempfile.TemporaryDirectory(prefix="bench-ddp-gpu-") as tmp:
        work = Path(tmp)
        _sample(work / "data", train_cars, test_cars, Size(1918, 1280))
        spec = DriverSpec(data_dir=str(work / "data"), output_dir=str(work / "output"), result="", preset="unet1024",
                          device="cuda", input_size="1024x1024", batch_size=GPU_BATCH, workers=GPU_WORKERS,
                          epochs=epochs, rounds=2)
        rows = measure(settings, spec, work, repeats=1)
    base = rows[0]
    for row in rows:
        for key in ("train", "predict"):
            row[f"{key}_scaling_efficiency"] = row[f"{key}_images_per_s"] / (row["processes"] * base[f"{key}_images_per_s"])
    figures = {"gpu": torch.cuda.get_device_name(0), "gpus": count, "train_cars": train_cars, "test_cars": test_cars,
               "settings": rows}
    print_table(
        f"DDP on {count} x {figures['gpu']} (nccl): UNet1024 1024x1024, batch {GPU_BATCH} per GPU, "
        f"{GPU_WORKERS} loader workers per process, {base['train_images']} training / {base['test_images']} test photos",
        ["setting", "train img/s", "efficiency", "validate img/s", "predict img/s", "efficiency"],
        [[r["setting"], r["train_images_per_s"], r["train_scaling_efficiency"], r["validate_images_per_s"],
          r["predict_images_per_s"], r["predict_scaling_efficiency"]] for r in rows],
    )
    if count == 1:
        print("  one GPU only: no scaling to measure")
    record("ddp_gpu", figures)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the README's tiny workload, one setting pair (about a minute)")
    parser.add_argument("--gpu", action="store_true", help="UNet1024 at 1024x1024 on 1 GPU vs N (needs CUDA)")
    parser.add_argument("--gpus", type=int, default=None, help="with --gpu: how many GPUs (default all)")
    parser.add_argument("--driver", metavar="SPEC", help=argparse.SUPPRESS)  # one process of a launch
    arguments = parser.parse_args()
    if arguments.driver:
        drive(DriverSpec(**json.loads(arguments.driver)))
    elif arguments.gpu:
        main_gpu(arguments.gpus)
    else:
        main(arguments.quick)
