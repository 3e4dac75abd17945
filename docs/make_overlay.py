"""Render the README's prediction picture from a finished run, with the tool's own overlay code.

    python docs/make_overlay.py output/validation/<run>/valid_predictions.csv.gz input/sample IMAGE_NAME

It decodes the submission row of IMAGE_NAME (a validation photo, so its true mask is known) at full
resolution and writes photo | truth | prediction (green hit, red miss, blue false alarm) at a third of
its size, with the same three at 1:1 below, cropped to the window with the most errors (the one
TensorBoard's validation pictures crop), to docs/prediction_overlay.jpg.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from carvana.data.images import read_image, read_mask  # noqa: E402
from carvana.kaggle import rle  # noqa: E402
from carvana.kaggle.files import MASKS_DIR, mask_name  # noqa: E402
from carvana.kaggle.rle_csv import read_rle_rows  # noqa: E402
from carvana.train.overlays import comparison_panel, worst_edge_window  # noqa: E402


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

    panel = comparison_panel(photo, truth, predicted)
    overview = cv2.resize(panel, (panel.shape[1] // 3, panel.shape[0] // 3), interpolation=cv2.INTER_AREA)
    # Three 1:1 crops of one window fill the overview's width.
    window = worst_edge_window(truth, predicted, side=width // 3)
    crops = np.hstack([window.of(part) for part in np.split(panel, 3, axis=1)])
    below = np.zeros((crops.shape[0], overview.shape[1], 3), np.uint8)
    below[:, :crops.shape[1]] = crops[:, :overview.shape[1]]
    cv2.imwrite(str(args.out), cv2.cvtColor(np.vstack([overview, below]), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
