"""Render the README's prediction picture from a finished run, with the tool's own overlay code.

    python docs/make_overlay.py output/validation/<run>/valid_predictions.csv.gz input/sample IMAGE_NAME

It decodes the submission row of IMAGE_NAME (a validation photo, so its true mask is known) at full
resolution and writes photo | truth | prediction (green hit, red miss, blue false alarm), with a
zoomed crop of the car's edge below, to docs/prediction_overlay.jpg.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from carvana import rle  # noqa: E402
from carvana.data.images import read_image, read_mask  # noqa: E402
from carvana.data.kaggle_layout import MASKS_DIR, mask_name  # noqa: E402
from carvana.data.rle_csv import read_rle_rows  # noqa: E402
from carvana.train.tensorboard import preview_panel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("image", help="file name of a validation photo, e.g. 0a1b2c3d4e5f_03.jpg")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "prediction_overlay.jpg")
    args = parser.parse_args()

    photo = read_image(args.data_dir / "train" / args.image)
    height, width = photo.shape[:2]
    truth = read_mask(args.data_dir / MASKS_DIR / mask_name(args.image))
    text = next(row.rle_mask for row in read_rle_rows(args.predictions) if row.img == args.image)
    predicted = rle.decode(text, height, width)

    panel = preview_panel(
        torch.from_numpy(photo).permute(2, 0, 1).float() / 255, torch.from_numpy(truth).float(),
        torch.from_numpy(predicted).float(), 0.5,
    )
    picture = (panel.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    overview = cv2.resize(picture, (picture.shape[1] // 3, picture.shape[0] // 3), interpolation=cv2.INTER_AREA)
    # A 1:1 crop of the error overlay around the car's lowest-left edge, where mistakes show.
    ys, xs = np.nonzero(truth)
    cy, cx = int(ys.max()) - 120, int(xs.min()) + 200
    crop = picture[max(cy - 160, 0):cy + 160, 2 * width + max(cx - 320, 0):2 * width + cx + 320]
    crop = cv2.resize(crop, (overview.shape[1], int(crop.shape[0] * overview.shape[1] / crop.shape[1])))
    cv2.imwrite(str(args.out), cv2.cvtColor(np.vstack([overview, crop]), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
