"""Cutouts of new photos: a mask PNG and an RGBA PNG whose alpha is that mask, for photos of any size."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from carvana.core.device import resolve_precision
from carvana.core.errors import ConfigError
from carvana.core.geometry import Size
from carvana.cutout.cutouts import CUTOUT_SUFFIX, MASK_SUFFIX, find_photos, output_stems, write_cutouts
from carvana.models import build_model
from carvana.models.forward_pass import ForwardPass
from carvana.models.specs import model_geometry
from carvana.predict.predictor import Predictor
from carvana.run.checkpoint import save_checkpoint
from cli_helpers import run_cli
from data_factory import write_jpeg
from training_helpers import tiny_config

GEOMETRY = model_geometry("unet1024", Size(128, 64))


class BrightIsCar(nn.Module):
    """A stand-in for a trained net whose answer is known: bright pixels are the car."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(1, keepdim=True) * 20.0


def bright_is_car_predictor() -> Predictor:
    device = torch.device("cpu")
    return Predictor(ForwardPass(BrightIsCar(), device, resolve_precision("off", device)))


def photo_with_a_bright_box(size: Size, box: tuple[int, int, int, int]) -> np.ndarray:
    """A dark RGB photo of `size` with a bright box (top, left, bottom, right)."""
    photo = np.full((size.height, size.width, 3), 30, np.uint8)
    top, left, bottom, right = box
    photo[top:bottom, left:right] = (230, 220, 210)
    return photo


def write_png(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("size", [Size(1918, 1280), Size(333, 221), Size(64, 300)], ids=str)
def test_a_photo_of_any_size_gets_a_mask_and_a_cutout_at_its_own_size(tmp_path, size):
    box = (size.height // 4, size.width // 4, size.height * 3 // 4, size.width * 3 // 4)
    photo = photo_with_a_bright_box(size, box)
    path = write_png(tmp_path / "car.png", photo)

    report = write_cutouts(bright_is_car_predictor(), [path], tmp_path / "out", GEOMETRY, threshold=0.5)

    assert report.written == [path] and report.failed == []
    mask, cutout = read_png(tmp_path / "out" / f"car{MASK_SUFFIX}"), read_png(tmp_path / "out" / f"car{CUTOUT_SUFFIX}")
    assert mask.shape == (size.height, size.width) and set(np.unique(mask)) <= {0, 255}
    assert cutout.shape == (size.height, size.width, 4)
    assert np.array_equal(cutout[..., 3], mask), "the cutout's alpha is the mask"
    assert np.array_equal(cv2.cvtColor(cutout[..., :3], cv2.COLOR_BGR2RGB), photo), "the photo is kept as it is"
    truth = np.zeros(mask.shape, bool)
    truth[box[0]:box[2], box[1]:box[3]] = True
    agreement = ((mask > 0) == truth).mean()
    assert agreement > 0.97, f"the mask covers the bright box ({agreement:.3f} of the pixels agree)"


def test_an_unreadable_file_gets_one_line_and_the_others_are_cut_out(tmp_path, caplog):
    good = write_jpeg(tmp_path / "a.jpg", photo_with_a_bright_box(Size(200, 120), (30, 50, 90, 150)))
    broken = tmp_path / "b.jpg"
    broken.write_bytes(good.read_bytes()[:300])  # a JPEG cut short
    not_a_photo = tmp_path / "c.png"
    not_a_photo.write_text("hello")
    last = write_jpeg(tmp_path / "d.jpg", photo_with_a_bright_box(Size(90, 160), (10, 10, 80, 70)))

    report = write_cutouts(bright_is_car_predictor(), find_photos([tmp_path]), tmp_path / "out", GEOMETRY, 0.5)

    assert report.written == [good, last]
    assert [path for path, _ in report.failed] == [broken, not_a_photo]
    lines = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert str(broken) in lines[0] and str(not_a_photo) in lines[1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"a{CUTOUT_SUFFIX}", f"a{MASK_SUFFIX}", f"d{CUTOUT_SUFFIX}", f"d{MASK_SUFFIX}"]


def test_photos_are_found_in_folders_and_missing_inputs_are_refused(tmp_path):
    folder = tmp_path / "shoot"
    folder.mkdir()
    photo = write_jpeg(folder / "x.jpg", photo_with_a_bright_box(Size(40, 30), (5, 5, 20, 20)))
    (folder / "notes.txt").write_text("not a photo")
    single = write_jpeg(tmp_path / "y.JPG", photo_with_a_bright_box(Size(40, 30), (5, 5, 20, 20)))

    assert find_photos([folder, single]) == [photo, single]
    with pytest.raises(ConfigError, match="no such photo or folder"):
        find_photos([tmp_path / "missing.jpg"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no JPEG or PNG"):
        find_photos([empty])


def test_two_photos_with_the_same_name_from_two_folders_keep_both_cutouts(tmp_path):
    paths = []
    for folder in ("front", "back"):
        (tmp_path / folder).mkdir()
        paths.append(write_jpeg(tmp_path / folder / "car.jpg", photo_with_a_bright_box(Size(64, 48), (8, 8, 40, 56))))

    write_cutouts(bright_is_car_predictor(), paths, tmp_path / "out", GEOMETRY, 0.5)

    assert (tmp_path / "out" / f"car{MASK_SUFFIX}").exists() and (tmp_path / "out" / f"car-2{MASK_SUFFIX}").exists()


def _trained_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint of a tiny model, as `train` leaves one in the output dir (its weights untrained)."""
    config = tiny_config(tmp_path)
    torch.manual_seed(0)
    model = build_model(config.model, config.width)
    path = tmp_path / "output" / "models" / "tiny" / "best.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint(path, {"format": 1, "model_name": config.model, "width": config.width, "epoch": 1,
                           "global_step": 1, "config": config.to_dict(), "model_state": model.state_dict()})
    return path


def test_the_cutout_command_cuts_out_photos_and_folders_with_the_latest_run_by_default(tmp_path, capsys,
                                                                                       monkeypatch):
    _trained_checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "photos"
    folder.mkdir()
    write_jpeg(folder / "wide.jpg", photo_with_a_bright_box(Size(300, 100), (20, 50, 80, 250)))
    single = write_png(tmp_path / "tall.png", photo_with_a_bright_box(Size(90, 170), (30, 10, 150, 80)))

    code, out, err = run_cli(["cutout", folder, single, "--out", "cut"], capsys)

    assert code == 0, err
    assert "output/models/tiny/best.pt" in out and "2 photos in cut" in out
    for stem, (width, height) in (("wide", (300, 100)), ("tall", (90, 170))):
        mask, cutout = read_png(tmp_path / "cut" / f"{stem}{MASK_SUFFIX}"), read_png(tmp_path / "cut" / f"{stem}{CUTOUT_SUFFIX}")
        assert mask.shape == (height, width) and cutout.shape == (height, width, 4)
        assert np.array_equal(cutout[..., 3], mask)


def test_the_cutout_command_reports_an_unreadable_photo_in_one_line_and_exits_1(tmp_path, capsys):
    checkpoint = _trained_checkpoint(tmp_path)
    good = write_jpeg(tmp_path / "a.jpg", photo_with_a_bright_box(Size(200, 120), (30, 50, 90, 150)))
    broken = tmp_path / "b.jpg"
    broken.write_bytes(good.read_bytes()[:300])

    code, out, err = run_cli(["cutout", good, broken, "--checkpoint", checkpoint, "--out", tmp_path / "cut",
                              "--threshold", "0.4"], capsys)

    assert code == 1
    assert err.strip().count("\n") == 0 and str(broken) in err, err
    assert "threshold 0.4" in out and "1 skipped" in out
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == [f"a{CUTOUT_SUFFIX}", f"a{MASK_SUFFIX}"]


def test_the_cutout_command_refuses_a_missing_photo_in_one_line(tmp_path, capsys):
    checkpoint = _trained_checkpoint(tmp_path)
    code, _, err = run_cli(["cutout", tmp_path / "nowhere.jpg", "--checkpoint", checkpoint], capsys)

    assert code != 0 and "nowhere.jpg: no such photo or folder" in err and err.strip().count("\n") == 0


def test_output_names_are_one_per_photo_even_where_a_renamed_one_meets_a_real_name():
    photos = [Path("in/a.jpg"), Path("in/a.png"), Path("in/a-2.jpg"), Path("more/a.jpg"), Path("in/A.JPG")]

    # a-2 is a real photo's own name, so the second `a` skips it; case is ignored (a macOS or USB disk).
    assert output_stems(photos) == ["a", "a-3", "a-2", "a-4", "A-5"]


@settings(max_examples=200)
@given(st.lists(st.sampled_from(["a", "A", "a-2", "a-3", "b", "a-2-2"]), max_size=8).flatmap(
    lambda stems: st.tuples(st.just(stems), st.lists(st.sampled_from(["x", "y"]), min_size=len(stems),
                                                     max_size=len(stems)))))
def test_output_names_never_collide_and_a_photo_whose_name_is_its_own_keeps_it(stems_and_folders):
    stems, folders = stems_and_folders
    photos = [Path(folder) / f"{stem}.jpg" for stem, folder in zip(stems, folders)]

    names = output_stems(photos)

    assert len({name.casefold() for name in names}) == len(photos)
    for photo, name in zip(photos, names):
        if [p.stem.casefold() for p in photos].count(photo.stem.casefold()) == 1:
            assert name == photo.stem


def test_a_photo_named_twice_is_found_once(tmp_path):
    folder = tmp_path / "shoot"
    folder.mkdir()
    photo = write_jpeg(folder / "x.jpg", photo_with_a_bright_box(Size(40, 30), (5, 5, 20, 20)))

    assert find_photos([folder, photo, folder / ".." / "shoot" / "x.jpg"]) == [photo]


def test_the_cutout_command_writes_one_mask_and_cutout_per_photo_when_names_collide(tmp_path, capsys):
    """a.jpg, a.png and a-2.jpg in one folder and another a.jpg elsewhere: four photos, eight files, each
    file the cut out of its own photo, and the renamed ones said on stdout."""
    checkpoint = _trained_checkpoint(tmp_path)
    shoot, more = tmp_path / "shoot", tmp_path / "more"
    shoot.mkdir(), more.mkdir()
    sizes = {shoot / "a.jpg": Size(64, 48), shoot / "a.png": Size(80, 40), shoot / "a-2.jpg": Size(40, 72),
             more / "a.jpg": Size(96, 56)}
    for path, size in sizes.items():
        image = photo_with_a_bright_box(size, (4, 4, size.height - 4, size.width - 4))
        write_jpeg(path, image) if path.suffix == ".jpg" else write_png(path, image)
    out_dir = tmp_path / "cut"

    code, out, err = run_cli(["cutout", shoot, more, "--checkpoint", checkpoint, "--out", out_dir], capsys)

    assert code == 0, err
    assert "4 photos in" in out
    names = {shoot / "a.jpg": "a", shoot / "a-2.jpg": "a-2", shoot / "a.png": "a-3", more / "a.jpg": "a-4"}
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        f"{name}{suffix}" for name in names.values() for suffix in (MASK_SUFFIX, CUTOUT_SUFFIX))
    for path, name in names.items():
        size = sizes[path]
        assert read_png(out_dir / f"{name}{MASK_SUFFIX}").shape == (size.height, size.width)
        assert read_png(out_dir / f"{name}{CUTOUT_SUFFIX}").shape == (size.height, size.width, 4)
    for renamed in (shoot / "a.png", more / "a.jpg"):
        line = next(line for line in out.splitlines() if line.startswith(str(renamed)))
        assert f"{names[renamed]}{MASK_SUFFIX}" in line, line


def test_cutting_out_again_into_the_same_folder_replaces_the_earlier_files(tmp_path, capsys):
    checkpoint = _trained_checkpoint(tmp_path)
    photos = [write_jpeg(tmp_path / name, photo_with_a_bright_box(Size(64, 48), (8, 8, 40, 56)))
              for name in ("a.jpg", "b.jpg")]
    out_dir = tmp_path / "cut"
    args = ["cutout", *photos, "--checkpoint", checkpoint, "--out", out_dir]

    assert run_cli(args, capsys)[0] == 0
    first = sorted(p.name for p in out_dir.iterdir())
    assert run_cli(args, capsys)[0] == 0

    assert sorted(p.name for p in out_dir.iterdir()) == first and len(first) == 4


def test_cutting_out_a_folder_into_itself_again_does_not_take_the_cutouts_for_photos(tmp_path):
    folder = tmp_path / "shoot"
    folder.mkdir()
    photo = write_jpeg(folder / "x.jpg", photo_with_a_bright_box(Size(40, 30), (5, 5, 20, 20)))
    write_cutouts(bright_is_car_predictor(), find_photos([folder], folder), folder, GEOMETRY, threshold=0.5)
    assert (folder / f"x{MASK_SUFFIX}").is_file()
    assert find_photos([folder], folder) == [photo], "the second run cuts out the photo, not its own outputs"
    assert len(find_photos([folder])) == 3, "elsewhere a PNG is a photo whatever its name"
