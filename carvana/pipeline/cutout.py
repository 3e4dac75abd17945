"""`cutout`: the mask and the transparent-background photo of new photos, with one trained model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from carvana.core.folders import check_writable_dir
from carvana.core.text import count
from carvana.cutout.cutouts import find_photos, write_cutouts
from carvana.pipeline.predict import load_predictor
from carvana.pipeline.report import prediction_words

log = logging.getLogger(__name__)


def run_cutout(photos: list[Path], out_dir: Path, checkpoint: Path | None, overrides: dict[str, Any]) -> int:
    """`cutout`: the mask and the transparent-background photo of each photo (files or folders of JPEG/PNG,
    any size) into `out_dir`; returns how many could not be read (each reported in one line)."""
    check_writable_dir(out_dir, "cutouts")  # before the model is loaded or any photo read
    found = find_photos(photos, out_dir)
    model = load_predictor(checkpoint, overrides)
    config = model.config
    log.info(f"Cutting out {count(len(found), 'photo')} into {out_dir} with {model.checkpoint.path} "
             f"({'; '.join(prediction_words(config, model.threshold_note))}) ...")
    report = write_cutouts(model.predictor, found, out_dir, config.geometry, config.threshold, config.mask_cleanup)
    skipped = f"; {len(report.failed)} skipped (see above)" if report.failed else ""
    log.info(f"Cutouts: {len(report.written)} photos in {out_dir} (NAME_mask.png and NAME_cutout.png each){skipped}")
    return len(report.failed)
