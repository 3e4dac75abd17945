"""From probabilities to submit.csv.gz: up-sampling, thresholding, streaming, atomic commit."""
from __future__ import annotations

import errno
import gzip
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from carvana.core.errors import CarvanaError
from carvana.core.geometry import Size
from carvana.kaggle import rle
from carvana.predict.hooks import PredictState
from carvana.predict.postprocess import probabilities_to_mask, probabilities_to_rle
from carvana.submission import writer as submission_writer
from carvana.submission.predictions_saver import PredictionsSaver
from carvana.submission.writer import SubmissionWriter

PHOTO = Size(1918, 1280)
MODEL = Size(384, 256)


def rectangle(size: Size, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """A 0/1 float32 probability map of `size` with ones in rows top..bottom-1, columns left..right-1."""
    probabilities = np.zeros((size.height, size.width), np.float32)
    probabilities[top:bottom, left:right] = 1.0
    return probabilities


def interpolated_step(src: int, dst: int, first: int, stop: int) -> np.ndarray:
    """Linear interpolation of a 1-D 0/1 step (ones at first..stop-1) at the centres of `dst` pixels."""
    step = np.zeros(src + 1)
    step[first:stop] = 1.0
    centres = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
    left = np.floor(centres).astype(int)
    weight = centres - left
    return (1 - weight) * step[left] + weight * step[left + 1]


def upsampled_rectangle(src: Size, dst: Size, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """The expected mask, computed independently of OpenCV: the bilinear interpolation of a
    rectangle is the product of the interpolations of its two 1-D steps, then > 0.5."""
    rows = interpolated_step(src.height, dst.height, top, bottom)
    columns = interpolated_step(src.width, dst.width, left, right)
    return np.outer(rows, columns) > 0.5


def read_rows(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt") as f:
        return [line.rstrip("\n").split(",") for line in f]


def predict_state(total: int) -> PredictState:
    return PredictState(model=torch.nn.Identity(), total=total)


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- post-processing


def test_a_rectangle_of_probabilities_becomes_the_upsampled_rectangle():
    box = (50, 60, 100, 200)  # top, left, bottom, right in model pixels
    mask = probabilities_to_mask(rectangle(MODEL, *box), PHOTO)
    assert mask.shape == (PHOTO.height, PHOTO.width)
    assert np.array_equal(mask, upsampled_rectangle(MODEL, PHOTO, *box))
    ys, xs = np.nonzero(mask)
    # 5x vertically and 1918/384 horizontally: the edges land where the scale puts them.
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (250, 499, 300, 998)


def test_the_rle_of_probabilities_decodes_to_the_upsampled_mask():
    probabilities = rectangle(Size(64, 64), 10, 5, 40, 33)
    text = probabilities_to_rle(probabilities, PHOTO)
    assert np.array_equal(rle.decode(text, PHOTO.height, PHOTO.width),
                          upsampled_rectangle(Size(64, 64), PHOTO, 10, 5, 40, 33))


def test_a_pixel_is_the_car_only_when_its_probability_is_above_the_threshold():
    flat = np.full((MODEL.height, MODEL.width), 0.7, np.float32)
    assert probabilities_to_mask(flat, PHOTO, threshold=0.5).all()
    assert probabilities_to_rle(flat, PHOTO, threshold=0.7) == ""
    assert probabilities_to_rle(flat, PHOTO, threshold=0.8) == ""
    assert probabilities_to_rle(flat, PHOTO, threshold=0.5) == f"1 {PHOTO.width * PHOTO.height}"


def test_probabilities_already_at_the_photo_size_are_only_thresholded():
    rng = np.random.default_rng(0)
    probabilities = rng.random((12, 20), dtype=np.float32)
    assert np.array_equal(probabilities_to_mask(probabilities, Size(20, 12), 0.3), probabilities > 0.3)


def test_a_batch_instead_of_one_map_is_refused():
    with pytest.raises(ValueError, match="one \\(height, width\\) probability map"):
        probabilities_to_mask(np.zeros((2, 8, 8), np.float32), PHOTO)


# --------------------------------------------------------------------------- the saver callback


def test_the_saver_streams_batches_into_a_gzip_submission_in_order(tmp_path):
    path = tmp_path / "submit.csv.gz"
    boxes = [(i * 10, i * 12, i * 10 + 60, i * 12 + 90) for i in range(10)]
    names = [f"car{i:02d}_{i % 16 + 1:02d}.jpg" for i in range(10)]
    saver = PredictionsSaver(path, PHOTO, threshold=0.5, workers=2)
    state = predict_state(len(names))
    saver.on_predict_begin(state)
    for start, stop in [(0, 4), (4, 8), (8, 10)]:
        state.names = names[start:stop]
        state.probabilities = torch.from_numpy(np.stack([rectangle(MODEL, *b) for b in boxes[start:stop]]))
        state.done = stop
        saver.on_predict_batch_end(state)
        assert not path.exists(), "the submission must not appear under its name before it is complete"
    saver.on_predict_end(state)

    assert saver.rows_written == 10
    rows = read_rows(path)
    assert rows[0] == ["img", "rle_mask"]
    assert [row[0] for row in rows[1:]] == names
    for (name, text), box in zip(rows[1:], boxes):
        expected = upsampled_rectangle(MODEL, PHOTO, *box)
        assert np.array_equal(rle.decode(text, PHOTO.height, PHOTO.width), expected), name
    assert files_in(tmp_path) == ["submit.csv.gz"]


def test_the_gzip_header_names_the_submission_not_its_temporary_file(tmp_path):
    path = tmp_path / "submit.csv.gz"
    with SubmissionWriter(path, Size(8, 4), workers=1) as writer:
        writer.add_batch(["a.jpg"], np.ones((1, 4, 8), np.float32))
    head = path.read_bytes()[:64]
    assert b"submit.csv\x00" in head and b".tmp-" not in head


def test_an_error_mid_stream_keeps_the_previous_submission_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "submit.csv.gz"
    path.write_bytes(gzip.compress(b"img,rle_mask\nold.jpg,1 1\n"))
    saver = PredictionsSaver(path, PHOTO, workers=2)
    state = predict_state(8)
    saver.on_predict_begin(state)
    state.names = ["a.jpg", "b.jpg"]
    state.probabilities = torch.rand(2, MODEL.height, MODEL.width)
    saver.on_predict_batch_end(state)
    assert read_rows(path) == [["img", "rle_mask"], ["old.jpg", "1 1"]]  # untouched while streaming
    state.names = ["c.jpg", "d.jpg", "e.jpg"]  # three names for two maps: the batch is refused
    with pytest.raises(ValueError, match="shape"):
        saver.on_predict_batch_end(state)
    assert read_rows(path) == [["img", "rle_mask"], ["old.jpg", "1 1"]]
    assert files_in(tmp_path) == ["submit.csv.gz"]


@pytest.mark.parametrize("stop", ["exception hook", "abort"])
def test_an_interrupted_prediction_removes_the_partial_file(tmp_path, stop):
    path = tmp_path / "submit.csv.gz"
    saver = PredictionsSaver(path, PHOTO, workers=1)
    state = predict_state(4)
    saver.on_predict_begin(state)
    state.names, state.probabilities = ["a.jpg", "b.jpg"], torch.rand(2, MODEL.height, MODEL.width)
    saver.on_predict_batch_end(state)
    if stop == "abort":
        saver.abort()
    else:
        saver.on_exception(state, KeyboardInterrupt())
    assert files_in(tmp_path) == []


def test_ctrl_c_inside_the_writer_block_removes_the_temp_file(tmp_path):
    path = tmp_path / "submit.csv.gz"
    with pytest.raises(KeyboardInterrupt):
        with SubmissionWriter(path, PHOTO, workers=2) as writer:
            writer.add_batch(["a.jpg"], np.random.default_rng(0).random((1, 64, 64), dtype=np.float32))
            raise KeyboardInterrupt
    assert files_in(tmp_path) == []


def test_a_failed_write_names_the_file_and_replaces_nothing(tmp_path):
    path = tmp_path / "submit.csv.gz"
    path.write_bytes(b"previous")
    writer = SubmissionWriter(path, Size(8, 4), workers=1)

    def disk_full(data):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer._out.write = disk_full
    writer.add_batch(["a.jpg"], np.ones((1, 4, 8), np.float32))
    with pytest.raises(CarvanaError, match="submit.csv.gz: could not be written .No space left on device"):
        writer.close()
    assert path.read_bytes() == b"previous"
    assert files_in(tmp_path) == ["submit.csv.gz"]


def test_rows_keep_the_submission_order_whatever_order_the_workers_finish_in(tmp_path):
    path = tmp_path / "submit.csv.gz"
    rng = np.random.default_rng(1)
    names = [f"img{i:03d}.jpg" for i in range(24)]
    with SubmissionWriter(path, Size(96, 64), workers=3, max_pending_batches=1) as writer:
        for start in range(0, 24, 3):
            # Maps of very different sizes make some jobs much slower than others.
            side = int(rng.choice([4, 300]))
            writer.add_batch(names[start:start + 3], rng.random((3, side, side), dtype=np.float32))
    assert [row[0] for row in read_rows(path)[1:]] == names


def test_the_caller_blocks_while_too_many_batches_wait(tmp_path, monkeypatch):
    release = threading.Event()
    real_encode_row = submission_writer.encode_row

    def slow_encode_row(*args):
        release.wait(timeout=30)
        return real_encode_row(*args)

    monkeypatch.setattr(submission_writer, "encode_row", slow_encode_row)
    path = tmp_path / "submit.csv.gz"
    writer = SubmissionWriter(path, Size(8, 4), workers=1, max_pending_batches=1)
    batch = np.ones((1, 4, 8), np.float32)

    def produce():
        for i in range(4):
            writer.add_batch([f"{i}.jpg"], batch)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(timeout=0.5)
    assert producer.is_alive(), "add_batch must wait while the pending queue is full"
    release.set()
    producer.join(timeout=30)
    assert writer.close() == 4
    assert [row[0] for row in read_rows(path)[1:]] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]


def test_mixed_precision_probabilities_give_the_same_rows_as_float32(tmp_path):
    probabilities = torch.from_numpy(np.stack([rectangle(Size(32, 16), 4, 6, 12, 20)]))
    texts = []
    for dtype in (torch.float32, torch.bfloat16):
        path = tmp_path / f"{dtype}.csv.gz"
        saver = PredictionsSaver(path, Size(96, 64), workers=1)
        state = predict_state(1)
        saver.on_predict_begin(state)
        state.names, state.probabilities = ["a.jpg"], probabilities.to(dtype)
        saver.on_predict_batch_end(state)
        saver.on_predict_end(state)
        texts.append(read_rows(path)[1])
    assert texts[0] == texts[1] and texts[0][1] != ""


def test_post_processing_on_the_model_device_writes_the_same_submission_as_the_cpu_workers(tmp_path):
    # On a GPU the saver up-samples and cuts the runs on the device; the same code runs here on the CPU.
    maps = torch.from_numpy(np.stack([rectangle(MODEL, 5 * i, 3 * i, 40 + 7 * i, 50 + 5 * i) for i in range(5)]))
    maps = maps + 0.3 * torch.rand(maps.shape, generator=torch.Generator().manual_seed(0))
    contents = []
    for on_device in (False, True):
        path = tmp_path / f"on_device_{on_device}.csv.gz"
        saver = PredictionsSaver(path, PHOTO, workers=2, on_device=on_device)
        state = predict_state(5)
        saver.on_predict_begin(state)
        for start, stop in [(0, 3), (3, 5)]:
            state.names, state.probabilities = [f"{i}.jpg" for i in range(start, stop)], maps[start:stop]
            saver.on_predict_batch_end(state)
        saver.on_predict_end(state)
        contents.append(read_rows(path))
    assert contents[0] == contents[1] and len(contents[0]) == 6
