"""Photos and masks as users really have them: every odd file is decoded right or refused by name.

Refusals go through the command line (`main.py run`, in-process): they must come before any
training, as ONE line on stderr that names the file. Files that are fine but unusual (EXIF
orientation, PNG bytes behind .jpg, 16-bit, greyscale, CMYK, progressive, RGBA) are checked
where their pixels are decoded: they must come out as the stored pixel grid, the grid the Kaggle
masks and RLE are defined on.
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
from PIL import Image

from carvana import cli
from carvana.core.errors import DataError
from carvana.core.geometry import Size
from carvana.data.datasets import CarvanaTrainDataset
from carvana.data.images import header_size, image_size, load_image, read_image, read_mask
from carvana.data.layout import load_carvana_data
from carvana.kaggle import rle
from carvana.kaggle import files as kl
from carvana.models.specs import model_geometry
from cli_helpers import run_cli
from data_factory import make_tiny_carvana

pytestmark = pytest.mark.reliability

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "cpu", "--input-size", "128x64", "--batch-size", "8", "--workers", "0", "--no-augment"]
SIZE = Size(192, 128)  # make_tiny_carvana's photos


def tiny_data(tmp_path: Path, **kwargs) -> Path:
    return make_tiny_carvana(tmp_path, cars=3, views=4, **kwargs)


def first(folder: Path, pattern: str = "*") -> Path:
    return sorted(folder.glob(pattern))[0]


def refused_line(tmp_path: Path, data: Path, capsys) -> tuple[str, str]:
    """`main.py run` on `data`: the one stderr line it was refused with, and what it printed."""
    code, out, err = run_cli(["run", "--dataset", "auto", "--data-dir", data, *TINY, "--epochs", "1",
                              "--output-dir", tmp_path / "output", "--log-dir", tmp_path / "logs"], capsys)
    assert code != 0, out
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "epoch 1/1" not in out, "refused before an epoch was spent on training"
    assert not (tmp_path / "output" / "submit.csv.gz").exists()
    return lines[0], out


def encoded(rgb: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo_pixels(path: Path) -> np.ndarray:
    """The photo's stored pixels as RGB, decoded by Pillow (a second decoder, orientation ignored)."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


# =========================================================================== one size for all (item 7)


def test_a_training_photo_of_another_size_is_refused_before_training_naming_it_and_both_sizes(tmp_path, capsys):
    data = tiny_data(tmp_path)
    odd = first(data / kl.TRAIN_DIR)
    photo = cv2.resize(cv2.imread(str(odd)), (96, 64), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(odd), photo)
    line, _ = refused_line(tmp_path, data, capsys)
    assert str(odd) in line and "1 of" in line and "96x64" in line and str(SIZE) in line, line


def test_a_test_photo_of_another_size_is_refused_before_training(tmp_path, capsys):
    data = tiny_data(tmp_path)
    odd = first(data / kl.TEST_DIR)
    cv2.imwrite(str(odd), np.full((256, 384, 3), 90, np.uint8))
    line, _ = refused_line(tmp_path, data, capsys)
    assert str(odd) in line and "384x256" in line and str(SIZE) in line, line


def test_predict_refuses_a_test_set_of_mixed_sizes_instead_of_encoding_it_at_the_first_size(tmp_path, capsys):
    data = tiny_data(tmp_path)
    odd = sorted((data / kl.TEST_DIR).glob("*.jpg"))[-1]  # not the first photo: its size is not the one used
    cv2.imwrite(str(odd), np.full((64, 96, 3), 90, np.uint8))
    submission = tmp_path / "submit.csv.gz"
    code, out, err = run_cli(["validate", submission, "--data-dir", data], capsys)
    assert code != 0 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and str(odd) in err, err


def test_a_jpeg_with_metadata_larger_than_the_first_read_still_gets_its_size_from_the_header(tmp_path):
    rgb = np.full((64, 96, 3), 128, np.uint8)
    path = tmp_path / "big_exif_01.jpg"
    # An ICC-like APP2 segment of 60 kB before the frame header.
    base = encoded(rgb, "JPEG")
    app2 = b"\xff\xe2" + (60002).to_bytes(2, "big") + bytes(60000)
    path.write_bytes(base[:2] + app2 + base[2:])
    assert image_size(path) == Size(96, 64)
    assert read_image(path).shape == (64, 96, 3)


# =========================================================================== train_masks.csv vs GIFs (item 8)


def rows(csv: Path) -> list[str]:
    return csv.read_text().splitlines()


def test_a_csv_row_that_disagrees_with_its_gif_is_refused_naming_the_line_and_the_gif(tmp_path, capsys):
    data = tiny_data(tmp_path)
    csv = data / kl.MASKS_CSV
    lines = rows(csv)
    name = lines[4].split(",")[0]
    other = rle.decode(lines[9].split(",")[1], SIZE.height, SIZE.width)
    shifted = np.roll(other, SIZE.width // 3, axis=1)  # another car, moved: a mask of another photo
    lines[4] = f"{name},{rle.encode(shifted)}"
    csv.write_text("\n".join(lines) + "\n")
    line, _ = refused_line(tmp_path, data, capsys)
    assert str(csv) in line and f"line 5 ({name})" in line and kl.mask_name(name) in line and "Dice" in line, line


def test_a_training_photo_without_a_row_in_the_csv_is_refused_naming_both(tmp_path, capsys):
    data = tiny_data(tmp_path)
    csv = data / kl.MASKS_CSV
    lines = rows(csv)
    name = lines[3].split(",")[0]
    csv.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    line, _ = refused_line(tmp_path, data, capsys)
    assert str(csv) in line and name in line and "no row" in line, line


def test_a_csv_row_naming_a_photo_that_is_not_there_is_refused_naming_the_line(tmp_path, capsys):
    data = tiny_data(tmp_path)
    csv = data / kl.MASKS_CSV
    lines = rows(csv)
    lines.append("ffffffffffff_01.jpg," + lines[1].split(",")[1])
    csv.write_text("\n".join(lines) + "\n")
    line, _ = refused_line(tmp_path, data, capsys)
    assert str(csv) in line and f"line {len(lines)} (ffffffffffff_01.jpg)" in line, line


# =========================================================================== odd encodings (item 13)


def exif_rotated(rgb: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return encoded(rgb, "JPEG", quality=95, exif=exif.tobytes())


def png_bytes(rgb: np.ndarray) -> bytes:
    return encoded(rgb, "PNG")


def png_16_bit(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    assert ok
    return data.tobytes()


def rgba_png(rgb: np.ndarray) -> bytes:
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 77, np.uint8)])
    return encoded(rgba, "PNG")


def greyscale_jpeg(rgb: np.ndarray) -> bytes:
    return encoded(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), "JPEG", quality=95)


def cmyk_jpeg(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def progressive_jpeg(rgb: np.ndarray) -> bytes:
    return encoded(rgb, "JPEG", quality=95, progressive=True)


DECODABLE: list[Callable[[np.ndarray], bytes]] = [exif_rotated, png_bytes, png_16_bit, rgba_png, greyscale_jpeg,
                                                  cmyk_jpeg, progressive_jpeg]


@pytest.mark.parametrize("encode", DECODABLE, ids=lambda f: f.__name__)
def test_an_unusual_but_valid_photo_named_jpg_loads_as_its_stored_pixels(encode, tmp_path):
    data = make_tiny_carvana(tmp_path, cars=2, views=2)
    photo = first(data / kl.TRAIN_DIR)
    original = read_image(photo)
    photo.write_bytes(encode(original))
    expected = photo_pixels(photo)

    loaded = load_carvana_data(data)  # header size, format and mask all accepted
    assert loaded.image_size == SIZE
    assert image_size(photo) == SIZE
    full = read_image(photo)
    assert full.shape == (SIZE.height, SIZE.width, 3)
    assert np.abs(full.astype(int) - expected.astype(int)).mean() < 3  # the stored pixels, not a rotation
    # The reduced libjpeg decode (used for small inputs) agrees with the full one.
    small, on_disk = load_image(photo, Size(SIZE.width // 2, SIZE.height // 2))
    assert on_disk == SIZE
    halved = cv2.resize(full, (SIZE.width // 2, SIZE.height // 2), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - halved.astype(int)).mean() < 4
    # And the pair trains: the mask (defined on the stored grid) lines up with the photo.
    image, mask = CarvanaTrainDataset([photo], [loaded.mask_path(photo.name)],
                                      model_geometry("unet1024", Size(128, 64))).load_pair(0)
    assert image.shape == (64, 128, 3) and mask.shape == (64, 128)


def test_exif_orientation_is_ignored_everywhere_so_the_mask_still_lines_up(tmp_path):
    data = make_tiny_carvana(tmp_path, cars=2, views=2)
    photo = first(data / kl.TRAIN_DIR)
    original = read_image(photo)
    photo.write_bytes(exif_rotated(original))
    assert header_size(photo) == SIZE  # the stored grid, not the displayed 128x192
    for min_size in (None, Size(SIZE.width // 4, SIZE.height // 4)):
        image, on_disk = load_image(photo, min_size or SIZE)
        assert on_disk == SIZE
    assert np.abs(read_image(photo).astype(int) - original.astype(int)).mean() < 3


def webp_named_jpg(data: Path) -> Path:
    photo = first(data / kl.TRAIN_DIR)
    photo.write_bytes(encoded(read_image(photo), "WEBP"))
    return photo


def bmp_named_jpg(data: Path) -> Path:
    photo = first(data / kl.TEST_DIR)
    photo.write_bytes(encoded(read_image(photo), "BMP"))
    return photo


def animated_gif_mask(data: Path) -> Path:
    mask = first(data / kl.MASKS_DIR)
    frame = read_mask(mask)
    frames = [Image.fromarray(frame * 255), Image.fromarray((1 - frame) * 255)]
    frames[0].save(mask, format="GIF", save_all=True, append_images=frames[1:])
    return mask


def same_id_as_jpg_and_upper_case_jpg(data: Path) -> Path:
    photo = first(data / kl.TRAIN_DIR)
    twin = photo.with_name(photo.stem + ".JPG")
    twin.write_bytes(photo.read_bytes())
    return twin


def same_id_as_jpg_and_jpeg(data: Path) -> Path:
    photo = first(data / kl.TRAIN_DIR)
    twin = photo.with_name(photo.stem + ".jpeg")
    twin.write_bytes(photo.read_bytes())
    return twin


def folder_named_like_a_photo(data: Path) -> Path:
    photo = first(data / kl.TRAIN_DIR)
    photo.unlink()
    photo.mkdir()
    return photo


def broken_symlink(data: Path) -> Path:
    photo = first(data / kl.TRAIN_DIR)
    photo.unlink()
    photo.symlink_to(data / "elsewhere" / photo.name)
    return photo


def broken_symlink_for_a_mask(data: Path) -> Path:
    mask = first(data / kl.MASKS_DIR)
    mask.unlink()
    mask.symlink_to(data / "elsewhere" / mask.name)
    return mask


def fifo_named_like_a_test_photo(data: Path) -> Path:
    photo = first(data / kl.TEST_DIR)
    photo.unlink()
    os.mkfifo(photo)
    return photo


# Each damage, and what the one line must say about the file it names.
REFUSED = {webp_named_jpg: "is a WebP image", bmp_named_jpg: "is a BMP image", animated_gif_mask: "animated GIF",
           same_id_as_jpg_and_upper_case_jpg: "besides", same_id_as_jpg_and_jpeg: "besides",
           folder_named_like_a_photo: "is a folder", broken_symlink: "broken symbolic link",
           broken_symlink_for_a_mask: "broken symbolic link", fifo_named_like_a_test_photo: "FIFO"}


@pytest.mark.parametrize("damage", REFUSED, ids=lambda f: f.__name__)
def test_a_file_that_is_not_one_usable_photo_or_mask_is_refused_naming_it(damage, tmp_path, capsys):
    data = tiny_data(tmp_path)
    culprit = damage(data)
    line, _ = refused_line(tmp_path, data, capsys)
    assert str(culprit) in line and REFUSED[damage] in line, line


def test_a_fifo_named_like_a_photo_never_hangs_a_real_run(tmp_path):
    data = tiny_data(tmp_path)
    photo = first(data / kl.TRAIN_DIR)
    photo.unlink()
    os.mkfifo(photo)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), "run", "--dataset", "auto", "--data-dir",
                             str(data), *TINY, "--epochs", "1", "--output-dir", str(tmp_path / "output"),
                             "--log-dir", str(tmp_path / "logs")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {photo}: is a FIFO (named pipe), not an image file; "
                                                  "remove it or put the real file there"]


@pytest.mark.parametrize("reader", [read_image, read_mask, image_size], ids=lambda f: f.__name__)
def test_reading_a_fifo_directly_is_refused_at_once(reader, tmp_path):
    fifo = tmp_path / "x_01.jpg"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            reader(fifo)
            outcome.append(None)
        except DataError as error:
            outcome.append(error)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "wb"):
            pass
        pytest.fail(f"{reader.__name__} waited on a FIFO")
    assert isinstance(outcome[0], DataError) and "FIFO" in str(outcome[0]) and str(fifo) in str(outcome[0])


def test_a_photo_without_read_permission_is_refused_naming_it(tmp_path, capsys):
    """Root reads any file, so the run is made by a forked child that drops to the user `nobody`.

    As nobody the child cannot read the interpreter's own files (they live under /root), so the
    parent first runs the same command on a copy refused at the same stage (a photo of another
    size): every module the child needs is then already imported.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user (and a non-root user cannot chmod a file back)")
    try:
        import pwd

        nobody = pwd.getpwnam("nobody").pw_uid
    except (ImportError, KeyError):
        pytest.skip("no user 'nobody' to run as")
    shared = Path(tempfile.mkdtemp(prefix="carvana-perm-"))  # tmp_path's parents are private to root
    try:
        shared.chmod(0o777)
        data = tiny_data(shared)
        for path in [shared, *shared.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o644)
        warm = shutil.copytree(data, shared / "warm")
        cv2.imwrite(str(first(warm / kl.TRAIN_DIR)), np.full((64, 96, 3), 90, np.uint8))
        refused_line(shared, warm, capsys)
        photo = first(data / kl.TRAIN_DIR)
        photo.chmod(0o600)  # readable by its owner, root, only
        err_file = shared / "stderr.txt"
        pid = os.fork()
        if pid == 0:  # the child: become nobody, run the command line, report through the exit code
            code = 99
            try:
                os.setgid(65534)
                os.setuid(nobody)
                with open(err_file, "w") as err:
                    os.dup2(err.fileno(), 2)
                    sys.stderr = err
                    code = cli.main(["run", "--dataset", "auto", "--data-dir", str(data), *TINY, "--epochs", "1",
                                     "--output-dir", str(shared / "mine"), "--log-dir", str(shared / "mine-logs")])
                    err.flush()
            except BaseException:  # shown by the parent's assertion
                import traceback

                with open(err_file, "a") as err:
                    traceback.print_exc(file=err)
            finally:
                os._exit(code)
        deadline = time.monotonic() + 120
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the run as nobody did not end")
            time.sleep(0.1)
        lines = err_file.read_text().strip().splitlines()
        assert os.waitstatus_to_exitcode(status) == 1, "\n".join(lines)
        assert len(lines) == 1 and str(photo) in lines[0] and "no permission to read it" in lines[0], lines
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_greyscale_gif_and_png_named_gif_masks_read_as_0_1(tmp_path):
    mask = np.zeros((8, 12), np.uint8)
    mask[2:5, 3:9] = 1
    grey_gif = tmp_path / "g_mask.gif"
    Image.fromarray(mask * 255, mode="L").save(grey_gif, format="GIF")
    png_gif = tmp_path / "p_mask.gif"
    Image.fromarray(mask * 255).save(png_gif, format="PNG")
    for path in (grey_gif, png_gif):
        assert np.array_equal(read_mask(path), mask), path


@pytest.mark.parametrize("car", [1, 65535], ids=["0/1", "0/65535"])
def test_a_16_bit_png_mask_reads_as_its_0_1(car, tmp_path):
    mask = np.zeros((8, 12), np.uint8)
    mask[2:5, 3:9] = 1
    path = tmp_path / "deep_mask.gif"
    cv2.imwrite(str(tmp_path / "deep.png"), mask.astype(np.uint16) * car)
    (tmp_path / "deep.png").rename(path)
    assert np.array_equal(read_mask(path), mask), "not shifted down to 8 bits, where 0/1 would be all background"


def test_a_16_bit_png_mask_with_grey_values_is_refused_naming_it(tmp_path):
    path = tmp_path / "grey_mask.png"
    cv2.imwrite(str(path), np.full((8, 12), 300, np.uint16))
    with pytest.raises(DataError) as error:
        read_mask(path)
    assert str(path) in str(error.value) and "16-bit" in str(error.value) and "300" in str(error.value)


def test_a_symlink_loop_named_like_a_photo_is_one_line_naming_it(tmp_path, capsys):
    data_dir = make_tiny_carvana(tmp_path, cars=2, views=2, size=Size(96, 64))
    photo = sorted((data_dir / "train").iterdir())[0]
    photo.unlink()
    photo.symlink_to(photo.name)
    code, _, err = run_cli(["train", "--data-dir", data_dir, "--epochs", "1", "--workers", "0"], capsys)
    assert code == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and str(photo) in err
