"""RLE encode of a 1918x1280 car mask: ours vs the seed's kernel, in the same run."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import best_of, car_like_mask, print_table, record  # noqa: E402
from carvana.kaggle import rle  # noqa: E402


def seed_rle_encode(mask: np.ndarray) -> str:
    """The seed's way: np.where on the flattened mask, with the first and last pixels forced to 0
    (so it is wrong for masks touching the image corners)."""
    pixels = mask.flatten()
    pixels[0] = 0
    pixels[-1] = 0
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 2
    runs[1::2] = runs[1::2] - runs[:-1:2]
    return " ".join(str(x) for x in runs)


def main() -> dict:
    mask = car_like_mask()
    as_bool = mask.astype(bool)
    assert seed_rle_encode(mask) == rle.encode(mask), "both kernels agree on a mask off the corners"
    text = rle.encode(mask)
    figures = {
        "seed_ms": best_of(lambda: seed_rle_encode(mask), repeat=7, number=20) * 1e3,
        "ours_uint8_ms": best_of(lambda: rle.encode(mask), repeat=7, number=20) * 1e3,
        "ours_bool_ms": best_of(lambda: rle.encode(as_bool), repeat=7, number=20) * 1e3,
        "decode_ms": best_of(lambda: rle.decode(text, 1280, 1918), repeat=7, number=20) * 1e3,
        "runs": len(text.split()) // 2,
        "target_ms": 1.5,
    }
    print_table("RLE encode, 1918x1280 car mask (ms per mask, lower is better)", ["kernel", "ms"], [
        ["seed (np.where on flattened mask)", figures["seed_ms"]],
        ["ours, uint8 mask", figures["ours_uint8_ms"]],
        ["ours, bool mask (as thresholded)", figures["ours_bool_ms"]],
        ["ours, decode", figures["decode_ms"]],
    ])
    record("rle_encode", figures)
    return figures


if __name__ == "__main__":
    main()
