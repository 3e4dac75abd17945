"""Finding the Kaggle data on disk, and one-line errors that name the broken file."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carvana.core.errors import DataError
from carvana.core.geometry import Size
from carvana.data.datasets import CarvanaTestDataset, CarvanaTrainDataset
from carvana.data.images import image_size, load_image, read_image, read_mask
from carvana.data.layout import StrayFilesWarning, is_carvana_data_dir, load_carvana_data
from carvana.kaggle import rle
from carvana.kaggle import files as kl
from carvana.models.specs import model_geometry
from data_factory import make_tiny_carvana, write_gif_mask, write_jpeg
from conftest import REAL_TEST_PHOTOS, needs_real_photos

SIZE = Size(96, 64)
GEOMETRY = model_geometry("unet1024", Size(64, 64))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return make_tiny_carvana(tmp_path, cars=2, size=SIZE, views=2)


def first_train(data_dir: Path) -> tuple[Path, Path]:
    name = sorted(p.name for p in (data_dir / kl.TRAIN_DIR).iterdir())[0]
    return data_dir / kl.TRAIN_DIR / name, data_dir / kl.MASKS_DIR / kl.mask_name(name)


def assert_one_line_naming(error: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message, message
    for word in words:
        assert word in message, message


# --- a good data dir --------------------------------------------------------------------------


def test_a_complete_data_dir_loads_with_names_and_sizes(data_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean dir gives no warning
        data = load_carvana_data(data_dir)
    assert data.train_dir == data_dir / "train" and data.masks_dir == data_dir / "train_masks"
    assert len(data.train_names) == 4 and data.train_names == sorted(data.train_names)
    assert data.image_size == SIZE
    assert data.mask_paths()[0] == data_dir / "train_masks" / kl.mask_name(data.train_names[0])
    assert all(p.is_file() for p in data.train_image_paths() + data.mask_paths() + data.test_image_paths())
    assert data.train_rle is not None and set(data.train_rle) == set(data.train_names)
    assert np.array_equal(rle.decode(data.train_rle[data.train_names[0]], SIZE.height, SIZE.width), read_mask(data.mask_paths()[0]))
    assert is_carvana_data_dir(data_dir)


def test_test_names_keep_the_sample_submission_order(data_dir: Path) -> None:
    csv = data_dir / kl.SAMPLE_SUBMISSION_CSV
    header, *rows = csv.read_text().splitlines()
    csv.write_text("\n".join([header, *reversed(rows)]) + "\n")
    data = load_carvana_data(data_dir)
    assert data.test_names == [row.split(",")[0] for row in reversed(rows)]
    assert data.test_names != sorted(data.test_names)


def test_train_is_used_unless_only_train_hq_exists_or_high_quality_is_preferred(data_dir: Path) -> None:
    shutil.copytree(data_dir / "train", data_dir / "train_hq")
    assert load_carvana_data(data_dir).train_dir == data_dir / "train"
    assert load_carvana_data(data_dir, prefer_high_quality=True).train_dir == data_dir / "train_hq"
    shutil.rmtree(data_dir / "train")
    assert load_carvana_data(data_dir).train_dir == data_dir / "train_hq"


def test_only_the_parts_asked_for_are_needed(data_dir: Path) -> None:
    shutil.rmtree(data_dir / "test")
    (data_dir / kl.SAMPLE_SUBMISSION_CSV).unlink()
    data = load_carvana_data(data_dir, need_test=False)
    assert data.test_dir is None and data.test_names == []

    other = make_tiny_carvana(data_dir.parent / "other", cars=1, size=SIZE, views=2)
    shutil.rmtree(other / "train")
    shutil.rmtree(other / "train_masks")
    data = load_carvana_data(other, need_train=False)
    assert data.train_dir is None and len(data.test_names) == 2 and data.image_size == SIZE
    assert not is_carvana_data_dir(other)


def test_stray_files_are_ignored_with_one_warning_naming_them(data_dir: Path) -> None:
    (data_dir / "train" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (data_dir / "train_masks" / "Thumbs.db").write_bytes(b"x")
    (data_dir / "test" / "notes.txt").write_text("hello")
    with pytest.warns(StrayFilesWarning) as record:
        data = load_carvana_data(data_dir)
    assert len(record) == 1
    message = str(record[0].message)
    assert ".DS_Store" in message and "Thumbs.db" in message and "notes.txt" in message
    assert len(data.train_names) == 4 and all(n.endswith(".jpg") for n in data.train_names)


@needs_real_photos
def test_photo_sizes_come_from_the_jpeg_header_of_real_kaggle_photos() -> None:
    photo = sorted(REAL_TEST_PHOTOS.glob("*.jpg"))[0]
    assert image_size(photo) == Size(1918, 1280)


@needs_real_photos
def test_a_real_photo_is_decoded_reduced_to_at_least_the_size_asked_for() -> None:
    photo = sorted(REAL_TEST_PHOTOS.glob("*.jpg"))[0]
    full = read_image(photo)
    assert full.shape == (1280, 1918, 3) and full.dtype == np.uint8
    reduced = read_image(photo, min_size=Size(384, 256))
    assert reduced.shape == (320, 480, 3)  # 1/4 scale; 1/8 (240x160) would be too small
    small, original = load_image(photo, Size(192, 128))
    assert small.shape == (128, 192, 3) and original == Size(1918, 1280)
    # The fast path gives the same picture as a full decode and an area resize, up to rounding.
    import cv2

    slow = cv2.resize(full, (192, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - slow.astype(int)).mean() < 3


# --- folder-level errors ----------------------------------------------------------------------

@pytest.mark.reliability
def test_a_missing_data_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        load_carvana_data(tmp_path / "nowhere")
    assert_one_line_naming(error, tmp_path / "nowhere", "not found")
    assert not is_carvana_data_dir(tmp_path / "nowhere")


@pytest.mark.reliability
def test_an_empty_data_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DataError) as error:
        load_carvana_data(tmp_path / "input")
    assert_one_line_naming(error, tmp_path / "input", "empty")


@pytest.mark.reliability
def test_a_missing_train_folder_is_named(data_dir: Path) -> None:
    shutil.rmtree(data_dir / "train")
    with pytest.raises(DataError) as error:
        load_carvana_data(data_dir)
    assert_one_line_naming(error, data_dir / "train", "not found")


@pytest.mark.reliability
def test_photos_unzipped_one_folder_too_deep_are_pointed_out(data_dir: Path) -> None:
    nested = data_dir / "train" / "train"
    nested.mkdir()
    for photo in (data_dir / "train").glob("*.jpg"):
        photo.rename(nested / photo.name)
    with pytest.raises(DataError) as error:
        load_carvana_data(data_dir)
    assert_one_line_naming(error, data_dir / "train", "train/train")


@pytest.mark.reliability
def test_a_photo_without_a_mask_names_the_missing_mask(data_dir: Path) -> None:
    _, mask = first_train(data_dir)
    mask.unlink()
    with pytest.raises(DataError) as error:
        load_carvana_data(data_dir)
    assert_one_line_naming(error, mask, "no mask")


@pytest.mark.reliability
def test_a_mask_without_a_photo_is_named(data_dir: Path) -> None:
    photo, mask = first_train(data_dir)
    photo.unlink()
    with pytest.raises(DataError) as error:
        load_carvana_data(data_dir)
    assert_one_line_naming(error, mask, "no photo")


# --- CSV errors -------------------------------------------------------------------------------


@pytest.mark.reliability
def test_a_missing_train_masks_csv_is_named(data_dir: Path) -> None:
    (data_dir / kl.MASKS_CSV).unlink()
    with pytest.raises(DataError) as error:
        load_carvana_data(data_dir)
    assert_one_line_naming(error, data_dir / kl.MASKS_CSV, "not found")


@pytest.mark.reliability
def test_a_bad_train_masks_csv_header_is_named(data_dir: Path) -> None:
    csv = data_dir / kl.MASKS_CSV
    csv.write_text(csv.read_text().replace("img,rle_mask", "image,mask", 1))
    with pytest.raises(DataError) as error:
        load_carvana_data(data_dir)
    assert_one_line_naming(error, csv, "header", "img,rle_mask")


@pytest.mark.reliability
def test_a_malformed_rle_row_is_named_by_line(data_dir: Path) -> None:
    csv = data_dir / kl.MASKS_CSV
    lines = csv.read_text().splitlines()
    name = lines[3].split(",")[0]
    lines[3] = f"{name},5 10 3"  # odd number of values
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as error:
        load_carvana_data(data_dir)
    assert_one_line_naming(error, csv, "line 4", name, "odd number")


@pytest.mark.reliability
def test_an_rle_run_past_the_last_pixel_is_reported(data_dir: Path) -> None:
    csv = data_dir / kl.MASKS_CSV
    lines = csv.read_text().splitlines()
    lines[1] = f"{lines[1].split(',')[0]},{SIZE.width * SIZE.height} 2"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as error:
        load_carvana_data(data_dir)
    assert_one_line_naming(error, csv, "line 2", "past the last pixel")


@pytest.mark.reliability
def test_sample_submission_with_a_duplicate_id_is_named(data_dir: Path) -> None:
    csv = data_dir / kl.SAMPLE_SUBMISSION_CSV
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(DataError) as error:
        load_carvana_data(data_dir)
    assert_one_line_naming(error, csv, "duplicate", lines[1].split(",")[0], f"line {len(lines) + 1}")


@pytest.mark.reliability
def test_sample_submission_problems_are_named(data_dir: Path) -> None:
    csv = data_dir / kl.SAMPLE_SUBMISSION_CSV
    good = csv.read_text()
    csv.write_text(good.replace("img,rle_mask", "id,pixels", 1))
    with pytest.raises(DataError) as error:
        load_carvana_data(data_dir)
    assert_one_line_naming(error, csv, "header")

    csv.write_text(good + "ffffffffffff_01.jpg,1 1\n")
    with pytest.raises(DataError) as error:
        load_carvana_data(data_dir)
    assert_one_line_naming(error, data_dir / "test" / "ffffffffffff_01.jpg", "not found")

    csv.unlink()
    with pytest.raises(DataError) as error:
        load_carvana_data(data_dir)
    assert_one_line_naming(error, csv, "not found")


# --- broken photos and masks, found when they are read ----------------------------------------


def train_dataset(data_dir: Path) -> CarvanaTrainDataset:
    data = load_carvana_data(data_dir, need_test=False)
    return CarvanaTrainDataset(data.train_image_paths(), data.mask_paths(), GEOMETRY)


@pytest.mark.reliability
def test_a_mask_of_another_size_than_its_photo_is_named(data_dir: Path) -> None:
    _, mask = first_train(data_dir)
    write_gif_mask(mask, np.zeros((SIZE.height + 2, SIZE.width), np.uint8))
    with pytest.raises(DataError) as error:
        train_dataset(data_dir)[0]
    assert_one_line_naming(error, mask, f"{SIZE.width}x{SIZE.height + 2}", str(SIZE))


@pytest.mark.reliability
def test_a_zero_byte_gif_is_named(data_dir: Path) -> None:
    _, mask = first_train(data_dir)
    mask.write_bytes(b"")
    with pytest.raises(DataError) as error:
        train_dataset(data_dir)[0]
    assert_one_line_naming(error, mask, "empty")


@pytest.mark.reliability
def test_a_truncated_gif_is_named(data_dir: Path) -> None:
    _, mask = first_train(data_dir)
    data = mask.read_bytes()
    mask.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError) as error:
        read_mask(mask)
    assert_one_line_naming(error, mask, "truncated GIF")


@pytest.mark.reliability
def test_a_truncated_jpeg_is_named(data_dir: Path) -> None:
    photo, _ = first_train(data_dir)
    data = photo.read_bytes()
    photo.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as error:
        train_dataset(data_dir)[0]
    assert_one_line_naming(error, photo, "truncated JPEG")


@pytest.mark.reliability
def test_a_corrupt_jpeg_is_named(tmp_path: Path) -> None:
    photo = write_jpeg(tmp_path / "a_01.jpg", np.full((64, 96, 3), 120, np.uint8))
    data = bytearray(photo.read_bytes())
    data[2:40] = bytes(38)  # wipe the header segments: intact ends, undecodable body
    photo.write_bytes(bytes(data))
    with pytest.raises(DataError) as error:
        CarvanaTestDataset([photo], GEOMETRY)[0]
    assert_one_line_naming(error, photo, "corrupt")

    photo.write_bytes(b"<html>404 Not Found</html>")  # a failed download saved as .jpg
    with pytest.raises(DataError) as error:
        read_image(photo)
    assert_one_line_naming(error, photo, "not a JPEG")


@pytest.mark.reliability
def test_a_mask_with_a_value_other_than_0_1_or_255_is_named(data_dir: Path) -> None:
    _, mask = first_train(data_dir)
    values = np.zeros((SIZE.height, SIZE.width), np.uint8)
    values[10:20, 10:20] = 7
    Image.fromarray(values).save(mask, format="GIF")
    with pytest.raises(DataError) as error:
        train_dataset(data_dir)[0]
    assert_one_line_naming(error, mask, "values other than 0/1 or 0/255", "found 0, 7")


def test_masks_stored_as_0_1_or_0_255_both_read_as_0_1(tmp_path: Path) -> None:
    mask = np.zeros((8, 12), np.uint8)
    mask[2:5, 3:9] = 1
    palette = write_gif_mask(tmp_path / "p_mask.gif", mask)
    Image.fromarray(mask * 255).save(tmp_path / "g_mask.gif", format="GIF")
    for path in (palette, tmp_path / "g_mask.gif"):
        read = read_mask(path)
        assert read.dtype == np.uint8 and np.array_equal(read, mask)


@pytest.mark.reliability
def test_a_corrupt_gif_is_named(tmp_path: Path) -> None:
    mask = tmp_path / "a_01_mask.gif"
    mask.write_bytes(b"GIF89a" + bytes(range(200)) + b";")  # right header and trailer, garbage between
    with pytest.raises(DataError) as error:
        read_mask(mask)
    assert_one_line_naming(error, mask, "corrupt GIF")
