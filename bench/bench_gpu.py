"""UNet1024 at 1024x1024 on a CUDA GPU: FLOPs, training and predict images/s, end-to-end predict.

Compares, in the same run: fp32 vs bf16 autocast + channels_last, with and without torch.compile,
for a training step and for inference; then runs the real prediction path (JPEG decode in
DataLoader workers -> model -> PredictionsSaver writing submit.csv.gz at 1918x1280) over a
built-in sample test set, and reports end-to-end images/s next to model-only images/s.

    python bench/bench_gpu.py [--images 512] [--batch 16] [--workers 12]

Needs CUDA; prints a notice and records nothing without it.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, record  # noqa: E402
from carvana.core.geometry import Size  # noqa: E402
from carvana.models import build_model  # noqa: E402
from carvana.models.specs import model_geometry  # noqa: E402
from carvana.run.config import preset  # noqa: E402
from carvana.train.losses import BCEDiceLoss  # noqa: E402

SIZE = Size(1024, 1024)
H100_BF16_DENSE_PEAK = 989e12  # NVIDIA's H100 SXM dense bf16 tensor-core figure, FLOP/s


def forward_flops(model: torch.nn.Module, batch: int = 1) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 3, SIZE.height, SIZE.width, device="cuda")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / batch


def _timed(fn, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def train_images_per_s(batch: int, bf16: bool, compiled: bool) -> float:
    model = build_model("unet1024").cuda()
    memory = torch.channels_last if bf16 else torch.contiguous_format
    model = model.to(memory_format=memory)
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.RMSprop(model.parameters(), lr=2e-4)
    loss_fn = BCEDiceLoss()
    x = torch.randn(batch, 3, SIZE.height, SIZE.width, device="cuda").to(memory_format=memory)
    y = (torch.rand(batch, 1, SIZE.height, SIZE.width, device="cuda") > 0.5).float()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            logits = step_model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = _timed(step, warmup=5 if compiled else 3, steps=20)
    return batch / seconds


def predict_images_per_s(batch: int, bf16: bool, compiled: bool) -> float:
    model = build_model("unet1024").cuda().eval()
    memory = torch.channels_last if bf16 else torch.contiguous_format
    model = model.to(memory_format=memory)
    run = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, SIZE.height, SIZE.width, device="cuda").to(memory_format=memory)

    def step() -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            torch.sigmoid(run(x).float())

    return batch / _timed(step, warmup=5 if compiled else 3, steps=20)


def end_to_end(images: int, batch: int, workers: int) -> dict[str, float]:
    """The real predict path on `images` generated 1918x1280 photos."""
    from carvana.data.datasets import make_test_loader
    from carvana.data.layout import load_carvana_data
    from carvana.predict.predictor import Predictor
    from carvana.sample.dataset import generate_sample_dataset
    from carvana.submission.predictions_saver import PredictionsSaver

    config = preset("unet1024").replace(batch_size=batch, workers=workers)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        start = time.perf_counter()
        generate_sample_dataset(data_dir, train_cars=1, test_cars=max(1, images // 16), progress=False)
        generated_s = time.perf_counter() - start
        data = load_carvana_data(data_dir, need_train=False)
        geometry = model_geometry(config.model, config.input_size)
        torch.manual_seed(config.seed)  # random weights, drawn as a new run draws them
        predictor = Predictor.for_config(config, config.new_model(), progress=False)
        loader = make_test_loader(data, geometry, config)
        # Warm-up pass on a few batches (cuDNN autotuning, worker start-up).
        warm = make_test_loader(data.test_image_paths()[: batch * 2], geometry, config)
        predictor.predict(warm, callbacks=[PredictionsSaver(Path(tmp) / "warm.csv.gz", data.image_size)])
        torch.cuda.synchronize()
        start = time.perf_counter()
        saver = PredictionsSaver(Path(tmp) / "submit.csv.gz", data.image_size)
        predictor.predict(loader, callbacks=[saver])
        seconds = time.perf_counter() - start
        n = len(data.test_names)
        # The two CPU stages alone, to see which one bounds the end-to-end figure.
        start = time.perf_counter()
        for _ in loader:
            pass
        loader_s = time.perf_counter() - start
        probabilities = torch.sigmoid(torch.randn(batch, 64, 64)).repeat_interleave(16, 1).repeat_interleave(16, 2)
        names = [f"x{i}.jpg" for i in range(batch)]
        writer_rows_per_s = {}
        for where, maps in (("cpu", probabilities), ("gpu", probabilities.cuda())):
            # "cpu": maps handed over on the CPU, post-processed by the writer's threads (the CPU path);
            # "gpu": maps left on the GPU, up-sampled and cut into runs there (what predict does on CUDA).
            writer = PredictionsSaver(Path(tmp) / f"writer_{where}.csv.gz", data.image_size)
            state = SimpleNamespace(names=names, probabilities=maps)
            start = time.perf_counter()
            writer.on_predict_begin(state)
            for _ in range(max(1, n // batch)):
                writer.on_predict_batch_end(state)
            writer.on_predict_end(state)
            writer_rows_per_s[where] = max(1, n // batch) * batch / (time.perf_counter() - start)
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds, "generate_s": generated_s,
            "loader_images_per_s": n / loader_s, "writer_rows_per_s": writer_rows_per_s["cpu"],
            "writer_on_gpu_rows_per_s": writer_rows_per_s["gpu"], "precision": predictor.forward.precision.name}


def main(images: int, batch: int, workers: int, compare_variants: bool = True) -> dict:
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device, nothing measured")
        return {}
    torch.backends.cudnn.benchmark = True
    figures: dict[str, float | str] = {"gpu": torch.cuda.get_device_name(0), "cpu_cores": os.cpu_count() or 0}
    flops = forward_flops(build_model("unet1024").cuda().eval())
    figures["forward_gflop_per_image"] = flops / 1e9

    rows = []
    variants = [("fp32", False, False), ("bf16 + channels_last", True, False),
                ("bf16 + channels_last + compile", True, True)]
    for label, bf16, compiled in variants if compare_variants else variants[1:2]:
        key = label.replace(" + ", "_").replace(" ", "_")
        # The seed's batch of 2 (compiling it too would double the compile time for little news).
        train = float("nan") if compiled else train_images_per_s(2, bf16, compiled)
        train8 = train_images_per_s(8, bf16, compiled)
        infer = predict_images_per_s(batch, bf16, compiled)
        figures[f"train_b2_{key}"] = train
        figures[f"train_b8_{key}"] = train8
        figures[f"predict_model_only_{key}"] = infer
        rows.append([label, train, train8, infer, 3 * flops * train8 / H100_BF16_DENSE_PEAK,
                     flops * infer / H100_BF16_DENSE_PEAK])
        torch.cuda.empty_cache()
    print_table(
        f"UNet1024 {SIZE} on {figures['gpu']} (images/s; forward {flops / 1e9:.0f} GFLOP/image; "
        "fraction of the 989 TFLOP/s bf16 dense peak, training counted as 3x forward)",
        ["variant", "train b2", "train b8", f"predict b{batch}", "train peak frac", "predict peak frac"], rows,
    )

    e2e = end_to_end(images, batch, workers)
    figures.update({f"e2e_{k}": v for k, v in e2e.items()})
    model_only = figures["predict_model_only_bf16_channels_last"]
    figures["e2e_over_model_only"] = e2e["images_per_s"] / model_only
    print_table(
        f"End-to-end predict: {e2e['images']} photos 1918x1280 -> submit.csv.gz "
        f"(batch {batch}, {workers} loader workers, precision {e2e['precision']})",
        ["way", "images/s"],
        [["model only, bf16 + channels_last", model_only],
         ["test loader alone (JPEG decode, resize, normalise)", e2e["loader_images_per_s"]],
         ["PredictionsSaver alone, maps on the CPU (resize, RLE, gzip on threads)", e2e["writer_rows_per_s"]],
         ["PredictionsSaver alone, maps on the GPU (runs on the device, text + gzip)",
          e2e["writer_on_gpu_rows_per_s"]],
         ["end to end (decode -> model -> RLE gzip)", e2e["images_per_s"]]],
    )
    print(f"  100,064 Kaggle test images at this rate: {100064 / e2e['images_per_s'] / 60:.1f} minutes")
    record("gpu_unet1024", figures)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--no-variants", action="store_true", help="skip the fp32 / compile comparison")
    args = parser.parse_args()
    main(args.images, args.batch, args.workers, compare_variants=not args.no_variants)
