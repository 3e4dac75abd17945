"""Every threshold and mask clean-up scored on the validation cars, from one pass of the model.

Each map is cleaned, up-sampled and thresholded at each threshold by the submission's own functions,
so the Dice reported for a threshold is exactly that of a submission made at it. Rows stream into one
`SubmissionWriter` per threshold; the chosen one's file is kept, so a `score` of it reproduces the
printed Dice. Maps are processed on worker threads while the model predicts the next batch.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from carvana.core.geometry import Size
from carvana.kaggle import rle
from carvana.predict.cleanup import clean_probabilities
from carvana.predict.hooks import PredictCallback, PredictState
from carvana.predict.postprocess import probabilities_to_runs
from carvana.predict.threshold import MARGIN, choose_threshold, validation_cars
from carvana.run.fields import MASK_CLEANUPS
from carvana.submission.score import dice_from_runs
from carvana.submission.writer import SubmissionWriter, default_workers

MAX_PENDING_BATCHES = 2  # batches whose maps wait for the worker threads while the model goes on


def image_dice(probabilities: np.ndarray, true_runs: np.ndarray, original_size: Size,
               thresholds: Sequence[float], cleanups: Sequence[str],
               kept_cleanup: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Dice of one (h, w) map against its true mask's runs for each (cleanup, threshold): a
    (len(cleanups), len(thresholds)) array; and the mask's runs at each threshold for `kept_cleanup`."""
    dice = np.empty((len(cleanups), len(thresholds)))
    kept: list[np.ndarray] = []
    for row, cleanup in enumerate(cleanups):
        for column, threshold in enumerate(thresholds):
            runs = probabilities_to_runs(clean_probabilities(probabilities, threshold, cleanup), original_size,
                                         threshold)
            dice[row, column] = dice_from_runs(runs, true_runs)
            if cleanup == kept_cleanup:
                kept.append(runs)
    return dice, kept


@dataclass(frozen=True)
class SearchResult:
    """Mean full-resolution Dice on the validation images for each clean-up and threshold tried."""

    thresholds: tuple[float, ...]
    cleanups: tuple[str, ...]
    mean_dice: np.ndarray  # (len(cleanups), len(thresholds))
    cleanup: str  # the clean-up in use: the threshold is chosen, and the predictions written, with it
    preferred: float  # kept unless another threshold is better by more than MARGIN
    threshold: float  # the chosen one
    images: int

    def dice(self, threshold: float, cleanup: str | None = None) -> float:
        row = self.cleanups.index(self.cleanup if cleanup is None else cleanup)
        return float(self.mean_dice[row, self.thresholds.index(threshold)])

    @property
    def validation_dice(self) -> float:
        return self.dice(self.threshold)

    def threshold_line(self, cars: int) -> str:
        """`threshold 0.45 chosen on 5 validation cars (Dice 0.9871 vs 0.9866 at 0.5)`, or why it was kept."""
        chosen, preferred = self.threshold, self.preferred
        if len(self.thresholds) == 1:
            return f"threshold {chosen:g} from --threshold (Dice {self.dice(chosen):.4f} on {validation_cars(cars)})"
        if chosen != preferred:
            return (f"threshold {chosen:g} chosen on {validation_cars(cars)} "
                    f"(Dice {self.dice(chosen):.4f} vs {self.dice(preferred):.4f} at {preferred:g})")
        tried = f"{self.thresholds[0]:g}..{self.thresholds[-1]:g}"
        means = dict(zip(self.thresholds, self.mean_dice[self.cleanups.index(self.cleanup)]))
        best = max(sorted(means), key=lambda t: means[t])
        if best == preferred:
            return f"threshold {chosen:g} kept on {validation_cars(cars)} (Dice {self.dice(chosen):.4f}, the best of {tried})"
        return (f"threshold {chosen:g} kept on {validation_cars(cars)} (Dice {self.dice(chosen):.4f}; the best of "
                f"{tried}, {best:g} at {means[best]:.4f}, is not better by more than {MARGIN:g})")

    def cleanup_line(self, cars: int) -> str:
        """Each clean-up's Dice at the chosen threshold, on one line (the evidence for choosing a default)."""
        scores = ", ".join(f"{cleanup} {self.dice(self.threshold, cleanup):.5f}" for cleanup in self.cleanups)
        return (f"mask cleanup at threshold {self.threshold:g} on {validation_cars(cars)}: {scores} "
                f"(in use: {self.cleanup})")


class ValidationSearch(PredictCallback):
    """Score the validation predictions at each of `thresholds` and each mask clean-up, and write the
    predictions at the chosen threshold to `path` (an `img,rle_mask` file, atomically).

    `truth`: image name -> its true mask's RLE, in the order the mean is taken (the truth CSV's);
    every one must be predicted. The threshold is chosen for `cleanup` (the one in use), preferring
    `preferred`; after prediction `result` holds the table.
    """

    def __init__(self, path: Path, truth: Mapping[str, str], original_size: Size, thresholds: Sequence[float],
                 preferred: float, cleanup: str = "none", workers: int | None = None):
        self.path = Path(path)
        self.truth = dict(truth)
        self.original_size = Size(*original_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.preferred = float(preferred)
        self.cleanup = cleanup
        self.cleanups = tuple(MASK_CLEANUPS)
        self.workers = workers or default_workers()
        self.result: SearchResult | None = None
        self._writers: list[SubmissionWriter] = []
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[list[str], list[Future]]] = deque()
        self._dice: dict[str, np.ndarray] = {}

    def on_predict_begin(self, state: PredictState) -> None:
        self.abort()
        self.result = None
        self._dice = {}
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="threshold-search")
        try:
            for _ in self.thresholds:  # unique temporary names beside `path`; only one is ever committed
                self._writers.append(SubmissionWriter(self.path, self.original_size, workers=1))
        except BaseException:
            self.abort()
            raise

    def on_predict_batch_end(self, state: PredictState) -> None:
        if self._pool is None:
            raise RuntimeError("ValidationSearch: on_predict_batch_end before on_predict_begin")
        if state.probabilities is None:
            raise ValueError("ValidationSearch: the predict state has no probabilities for this batch")
        try:
            maps = np.array(state.probabilities.detach().to("cpu", torch.float32).numpy(), copy=True)
            names = list(state.names)
            jobs = [self._pool.submit(self._score_image, name, maps[i]) for i, name in enumerate(names)]
            self._pending.append((names, jobs))
            while len(self._pending) > MAX_PENDING_BATCHES:
                self._collect_oldest()
        except BaseException:
            self.abort()
            raise

    def on_predict_end(self, state: PredictState) -> None:
        try:
            while self._pending:
                self._collect_oldest()
            missing = [name for name in self.truth if name not in self._dice]
            if missing:
                raise ValueError(f"{len(missing)} of the {len(self.truth)} validation images were not predicted "
                                 f"(e.g. {missing[0]})")
            table = np.stack([self._dice[name] for name in self.truth])  # the truth's order, as `score` takes it
            mean = table.mean(axis=0)
            kept_row = mean[self.cleanups.index(self.cleanup)]
            threshold = choose_threshold(dict(zip(self.thresholds, kept_row)), self.preferred)
            self.result = SearchResult(self.thresholds, self.cleanups, mean, self.cleanup, self.preferred,
                                       threshold, len(table))
            chosen = self._writers.pop(self.thresholds.index(threshold))
            self.abort()
            chosen.close()
        except BaseException:
            self.abort()
            raise

    def on_exception(self, state: PredictState, exception: BaseException) -> None:
        self.abort()

    def abort(self) -> None:
        """Drop every temporary file and stop the threads; a previous predictions file stays as it was."""
        for _, jobs in self._pending:
            for job in jobs:
                job.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.abort()

    def _score_image(self, name: str, probabilities: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        if name not in self.truth:
            raise ValueError(f"{name}: predicted, but not among the validation images' true masks")
        width, height = self.original_size
        true_runs = rle.parse_runs(self.truth[name], height, width)
        return image_dice(probabilities, true_runs, self.original_size, self.thresholds, self.cleanups,
                          self.cleanup)

    def _collect_oldest(self) -> None:
        names, jobs = self._pending.popleft()
        results = [job.result() for job in jobs]
        for name, (dice, _) in zip(names, results):
            self._dice[name] = dice
        for column, writer in enumerate(self._writers):
            writer.add_runs(names, [kept[column] for _, kept in results])
