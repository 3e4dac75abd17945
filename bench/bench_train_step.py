"""Train step of the cpu preset (slim UNet1024, width 0.25, 192x128, batch 8): fp32 vs channels_last + bf16.

The step is the one `CarvanaClassifier._train_one_epoch` takes, on the classifier's own model,
precision, loss and optimiser: forward under the precision's autocast, BCE+Dice loss, the loss
read back, backward, optimiser step, the batch's Dice. Batches are already in memory, so only the
step is timed. Runs on CUDA when there is one (there the mixed dtype is what `amp=auto` picks).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, record  # noqa: E402
from carvana.core.device import select_device, to_memory_format  # noqa: E402
from carvana.run.config import Config, preset  # noqa: E402
from carvana.train.classifier import CarvanaClassifier  # noqa: E402
from carvana.train.metrics import dice_from_logits  # noqa: E402


def _variants(device: torch.device) -> dict[str, dict]:
    mixed = "bf16" if device.type == "cpu" else "auto"
    return {
        "fp32": {"amp": "off", "memory_format": "nchw"},
        "fp32 + channels_last": {"amp": "off", "memory_format": "channels_last"},
        f"{mixed} autocast": {"amp": mixed, "memory_format": "nchw"},
        f"channels_last + {mixed} autocast": {"amp": mixed, "memory_format": "channels_last"},
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _steps_per_s(classifier: CarvanaClassifier, images: torch.Tensor, masks: torch.Tensor, steps: int, repeat: int) -> float:
    model, device = classifier.model, classifier.device
    model.train()

    def step() -> None:
        batch = to_memory_format(images.to(device, non_blocking=True), classifier.forward.channels_last)
        target = masks.to(device, non_blocking=True)
        with classifier.forward.precision.autocast():
            logits = model(batch)
        loss = classifier.loss_fn(logits, target)
        float(loss.detach())  # the loop reads the loss every step (divergence check)
        classifier.optimizer.zero_grad(set_to_none=True)
        if classifier.scaler is not None:
            classifier.scaler.scale(loss).backward()
            classifier.scaler.step(classifier.optimizer)
            classifier.scaler.update()
        else:
            loss.backward()
            classifier.optimizer.step()
        float(dice_from_logits(logits.detach(), target, classifier.config.threshold).sum())

    for _ in range(2):  # warm-up: oneDNN picks its kernels for each layout and dtype
        step()
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return steps / best


def main(quick: bool = False) -> dict:
    steps, repeat = (3, 2) if quick else (3, 5)
    base: Config = preset("cpu")
    device = select_device(base.device)
    geometry_size = base.input_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(base.batch_size, 3, geometry_size.height, geometry_size.width, generator=generator)
    masks = (torch.rand(base.batch_size, 1, geometry_size.height, geometry_size.width, generator=generator) > 0.5).float()
    auto = CarvanaClassifier(base, device=device, progress=False).forward.layout  # timed here, or from the cache
    figures: dict = {"device": str(device), "batch_size": base.batch_size, "input": str(geometry_size),
                     "width": base.width, "auto_picks": auto.describe()}
    table = []
    baseline = None
    for label, settings in _variants(device).items():
        classifier = CarvanaClassifier(base.replace(**settings), device=device, progress=False)
        rate = _steps_per_s(classifier, images, masks, steps, repeat)
        baseline = baseline or rate
        key = label.replace(" + ", "_").replace(" ", "_")
        figures[f"{key}_steps_per_s"] = rate
        figures[f"{key}_images_per_s"] = rate * base.batch_size
        table.append([label, classifier.forward.precision.name, rate, rate * base.batch_size, rate / baseline])
    print_table(
        f"Train step, cpu preset ({base.model} width {base.width:g}, {geometry_size}, batch {base.batch_size}) on {device}; "
        f"auto picks {auto.describe()}",
        ["variant", "precision", "steps/s", "images/s", "x fp32"], table,
    )
    record("train_step", figures)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    main(parser.parse_args().quick)
