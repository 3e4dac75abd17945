"""The prediction callback that turns each batch of probabilities into submission rows.

Nothing of the test set is held in memory: each batch is copied into a `SubmissionWriter`, which
post-processes it on worker threads while the model predicts the next one, and the file appears
under its real name only when every row is written.

Probabilities on a GPU are up-sampled, thresholded and cut into runs there
(`postprocess.probability_batch_to_runs`): a few thousand integers per image cross to the CPU
instead of a megabyte of probabilities, and the CPU is left free for decoding the next photos.
A mask clean-up (carvana.predict.cleanup) needs the map's regions, which are found on the CPU:
with one, the small maps at the model's size come to the CPU and take the row path.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from carvana.core.geometry import Size
from carvana.predict.hooks import PredictCallback, PredictState
from carvana.predict.postprocess import probability_batch_to_runs
from carvana.submission.writer import SubmissionWriter

log = logging.getLogger(__name__)


class PredictionsSaver(PredictCallback):
    """Stream predictions into an `img,rle_mask` submission at `path` (gzip for .gz, plain for .csv), atomically.

    `original_size` is the photos' size the masks are up-sampled to (1918x1280 for Carvana),
    `threshold` the probability above which a pixel is the car. `on_device`: post-process where the
    probabilities are (True), on the CPU's worker threads (False), or on the device when it is not
    the CPU (None, the default). `cleanup`: one of `config.MASK_CLEANUPS`, done on the CPU.
    """

    def __init__(self, path: Path, original_size: Size, threshold: float = 0.5, workers: int | None = None,
                 on_device: bool | None = None, cleanup: str = "none"):
        self.path = Path(path)
        self.original_size = Size(*original_size)
        self.threshold = float(threshold)
        self.cleanup = cleanup
        self.workers = workers
        self.on_device = on_device
        self.rows_written = 0
        self._writer: SubmissionWriter | None = None

    def on_predict_begin(self, state: PredictState) -> None:
        self.abort()  # a previous prediction that never ended must not leave its temp file
        self.rows_written = 0
        self._writer = SubmissionWriter(self.path, self.original_size, self.threshold, workers=self.workers,
                                        cleanup=self.cleanup)

    def on_predict_batch_end(self, state: PredictState) -> None:
        if self._writer is None:
            raise RuntimeError("PredictionsSaver: on_predict_batch_end before on_predict_begin")
        if state.probabilities is None:
            raise ValueError("PredictionsSaver: the predict state has no probabilities for this batch")
        on_device = self.on_device
        if on_device is None:
            on_device = state.probabilities.device.type != "cpu"
        on_device = on_device and self.cleanup == "none"
        try:
            if on_device:
                runs = probability_batch_to_runs(state.probabilities, self.original_size, self.threshold)
                self._writer.add_runs(list(state.names), runs)
            else:
                # bf16/fp16 maps (mixed precision) become float32 here; float32 ones are not copied twice.
                probabilities = state.probabilities.detach().to("cpu", torch.float32).numpy()
                self._writer.add_batch(list(state.names), probabilities)
        except BaseException:
            self.abort()
            raise

    def on_predict_end(self, state: PredictState) -> None:
        if self._writer is None:
            raise RuntimeError("PredictionsSaver: on_predict_end before on_predict_begin")
        writer, self._writer = self._writer, None
        self.rows_written = writer.close()  # aborts (removes the temp file) itself if it fails
        log.debug("%s: %d rows written", self.path, self.rows_written)

    def on_exception(self, state: PredictState, exception: BaseException) -> None:
        """Prediction stopped early (Ctrl-C, an error): drop the partial file."""
        self.abort()

    def abort(self) -> None:
        """Remove the partial temporary file; a previous complete submission at `path` stays as it was."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.abort()
