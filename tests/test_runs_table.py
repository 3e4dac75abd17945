"""`python main.py runs`: the runs of an output dir in a table, best first, and as CSV."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

from carvana.core.locks import FolderLock
from carvana.predict.threshold import ThresholdRecord, save_threshold
from carvana.run.identity import LOCK_NAME
from carvana.run.out_of_fold import write_out_of_fold_record
from carvana.train.classifier import CarvanaClassifier
from carvana.train.early_stopping import EarlyStopping
from carvana.train.model_checkpoint import ModelCheckpoint
from cli_helpers import run_cli
from training_helpers import loaders, tiny_config


def train_run(tmp_path: Path, name: str, epochs: int, planned: int, scored: float | None = None,
              early_stopping: bool = False) -> Path:
    """Train the run `name` for `epochs` of its `planned` epochs; `scored`: the full-resolution Dice its
    best checkpoint is then scored with (threshold 0.45), as `train` does after training."""
    folder = tmp_path / "output" / "models" / name
    config = tiny_config(tmp_path, run_name=name, epochs=planned, early_stopping_patience=1 if early_stopping else None)
    callbacks = [ModelCheckpoint(folder, monitor="val_dice", mode="max")]
    if early_stopping:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=1, min_delta=10.0))
    train, valid = loaders()
    CarvanaClassifier(config, progress=False).train(train, valid, epochs=epochs, callbacks=callbacks)
    if scored is not None:
        save_threshold(folder / "best.pt", ThresholdRecord(0.45, True, scored, 2))
    return folder


def train_fold_run(tmp_path: Path, name: str, folds: int = 2, scored: float = 0.9) -> Path:
    """A fold run as `train --folds K` leaves it: each fold trained one epoch in `fold-N`, and the run's
    out-of-fold record (Dice `scored`, threshold 0.5)."""
    folder = tmp_path / "output" / "models" / name
    for fold in range(1, folds + 1):
        config = tiny_config(tmp_path, run_name=name, epochs=1, folds=folds, fold=fold)
        train, valid = loaders()
        checkpoint = ModelCheckpoint(folder / f"fold-{fold}", monitor="val_dice", mode="max")
        CarvanaClassifier(config, progress=False).train(train, valid, epochs=1, callbacks=[checkpoint])
    write_out_of_fold_record(folder, {"folds": folds, "dice": scored, "threshold": 0.5, "mask_cleanup": "none"})
    return folder


def spoil(path: Path, how: str) -> None:
    """Damage a checkpoint file: cut it to half its size, or fill it with bytes that are not one."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if how == "truncated" else b"\x00garbage" * 50)


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def table_rows(out: str) -> dict[str, list[str]]:
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].split()[:2] == ["run", "status"], lines[0]
    return {line.split()[0]: line for line in lines[1:]}


def test_runs_lists_finished_stopped_and_running_runs_best_first_with_a_csv_copy(tmp_path, capsys):
    train_run(tmp_path, "good", epochs=2, planned=2, scored=0.93)
    train_run(tmp_path, "better", epochs=2, planned=2, scored=0.95)
    train_run(tmp_path, "cut", epochs=1, planned=3)  # interrupted after its first epoch
    train_run(tmp_path, "patient", epochs=3, planned=3, early_stopping=True)
    running = FolderLock(tmp_path / "output" / "models" / "live", LOCK_NAME)
    assert running.acquire(wait=False)
    (tmp_path / "output" / "models" / "empty").mkdir()  # a run that never started: listed, no checkpoint
    capsys.readouterr()
    try:
        code, out, err = run_cli(["runs", "--output-dir", tmp_path / "output", "--csv", tmp_path / "runs.csv"],
                                 capsys)
    finally:
        running.release()

    assert code == 0, err
    rows = table_rows(out.split("CSV:")[0])
    # Scored at full resolution first (by that Dice), then by the best epoch's Dice, then the rest.
    assert list(rows) == ["better", "good", "patient", "cut", "empty", "live"]
    assert "finished" in rows["better"] and "0.9500" in rows["better"] and "0.45" in rows["better"]
    assert "stopped at epoch 1/3" in rows["cut"] and " 1/3 " in rows["cut"]
    assert "early stop" in rows["patient"]
    assert "running" in rows["live"]
    assert "no checkpoint" in rows["empty"]
    assert str(tmp_path / "output" / "models" / "better" / "best.pt") in rows["better"]
    with open(tmp_path / "runs.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["run"] for row in table][:2] == ["better", "good"]
    assert float(table[0]["validation_dice"]) == 0.95 and float(table[0]["train_seconds"]) > 0


def test_runs_says_so_when_there_are_none(tmp_path, capsys):
    code, out, _ = run_cli(["runs", "--output-dir", tmp_path / "nothing"], capsys)

    assert code == 0 and "No runs in" in out


def test_every_run_folder_gets_a_row_and_an_unreadable_checkpoint_is_named_in_it(tmp_path, capsys):
    models = tmp_path / "output" / "models"
    train_run(tmp_path, "good", epochs=1, planned=1, scored=0.9)
    spoil(train_fold_run(tmp_path, "kfold") / "fold-1" / "last.pt", "truncated")
    cut = train_fold_run(tmp_path, "kcut")  # cut in its first fold, whose checkpoints are then damaged
    shutil.rmtree(cut / "fold-2")
    (cut / "out_of_fold.json").unlink()
    for name in ("last.pt", "best.pt"):
        spoil(cut / "fold-1" / name, "garbage")
    garbled = train_run(tmp_path, "garbled", epochs=1, planned=1)
    for name in ("last.pt", "best.pt"):
        spoil(garbled / name, "garbage")
    half = train_run(tmp_path, "half", epochs=1, planned=2, scored=0.8)
    spoil(half / "last.pt", "garbage")  # cannot be resumed, but its best.pt still predicts
    (models / "stray").mkdir()  # failed before its first epoch, or not a run: no checkpoint
    (models / ".trash").mkdir()  # hidden folders and files are not runs
    (models / "notes.txt").write_text("not a run")
    capsys.readouterr()

    code, out, err = run_cli(["runs", "--output-dir", tmp_path / "output", "--csv", tmp_path / "runs.csv"], capsys)

    assert code == 0, err
    rows = table_rows(out.split("CSV:")[0])
    # By Dice (kfold's out-of-fold record is readable), then by name.
    assert list(rows) == ["good", "kfold", "half", "garbled", "kcut", "stray"]
    assert "unreadable (fold-1/last.pt: not a checkpoint)" in rows["kfold"]
    assert "unreadable (fold-1/last.pt: not a checkpoint; fold-1/best.pt: not a checkpoint)" in rows["kcut"]
    assert "unreadable (last.pt: not a checkpoint; best.pt: not a checkpoint)" in rows["garbled"]
    assert "unreadable (last.pt: not a checkpoint)" in rows["half"] and str(half / "best.pt") in rows["half"]
    assert "0.8000" in rows["half"]
    assert "no checkpoint" in rows["stray"]
    table = read_csv(tmp_path / "runs.csv")
    assert list(table) == list(rows)
    columns = ("model", "epochs", "train_seconds", "validation_dice", "best_checkpoint")
    assert [table["garbled"][column] for column in columns] == [""] * 5, "nothing of it can be known"
    assert [table["stray"][column] for column in columns] == ["", "0", "0.0", "", ""]
    assert table["kfold"]["best_checkpoint"] == str(models / "kfold"), "its folds' best.pt still predict"
    assert table["kcut"]["best_checkpoint"] == "", "an ensemble with an unreadable best.pt cannot predict"


def test_a_fold_runs_best_checkpoint_is_its_folder_which_predict_takes_as_the_folds_ensemble(tmp_path, capsys):
    folder = train_fold_run(tmp_path, "kfold", folds=2, scored=0.91)
    capsys.readouterr()

    code, out, err = run_cli(["runs", "--output-dir", tmp_path / "output", "--csv", tmp_path / "runs.csv"], capsys)

    assert code == 0, err
    row = table_rows(out.split("CSV:")[0])["kfold"]
    assert "finished 2 folds" in row and "0.9100" in row
    assert row.endswith(f"{folder} (ensemble of 2 folds)"), row
    assert read_csv(tmp_path / "runs.csv")["kfold"]["best_checkpoint"] == str(folder)


def test_a_damaged_out_of_fold_record_is_named_in_the_fold_runs_row(tmp_path, capsys):
    folder = train_fold_run(tmp_path, "kfold", folds=2)
    (folder / "out_of_fold.json").write_text("{ not json")
    capsys.readouterr()

    code, out, err = run_cli(["runs", "--output-dir", tmp_path / "output"], capsys)

    assert code == 0, err
    assert "unreadable (out_of_fold.json:" in table_rows(out)["kfold"]


def test_a_checkpoint_that_loads_but_holds_odd_values_is_an_unreadable_row_not_a_crash(tmp_path, capsys):
    import torch

    good = train_run(tmp_path, "good", epochs=1, planned=1, scored=0.9)
    odd = tmp_path / "output" / "models" / "odd"
    odd.mkdir()
    payload = torch.load(good / "last.pt", weights_only=True)
    payload["epoch"] = "one"  # a loadable file written by something else, or edited by hand
    torch.save(payload, odd / "last.pt")
    capsys.readouterr()
    code, out, err = run_cli(["runs", "--output-dir", tmp_path / "output"], capsys)
    assert code == 0, err
    rows = table_rows(out)
    assert "unreadable" in rows["odd"] and "finished" in rows["good"]
