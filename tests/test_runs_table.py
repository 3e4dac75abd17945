"""`python main.py runs`: the runs of an output dir in a table, best first, and as CSV."""
from __future__ import annotations

import csv
from pathlib import Path

from carvana.core.locks import FolderLock
from carvana.predict.threshold import ThresholdRecord, save_threshold
from carvana.run.identity import LOCK_NAME
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
    (tmp_path / "output" / "models" / "empty").mkdir()  # a run that never started: not listed
    capsys.readouterr()
    try:
        code, out, err = run_cli(["runs", "--output-dir", tmp_path / "output", "--csv", tmp_path / "runs.csv"],
                                 capsys)
    finally:
        running.release()

    assert code == 0, err
    rows = table_rows(out.split("CSV:")[0])
    # Scored at full resolution first (by that Dice), then by the best epoch's Dice, then the rest.
    assert list(rows) == ["better", "good", "patient", "cut", "live"]
    assert "finished" in rows["better"] and "0.9500" in rows["better"] and "0.45" in rows["better"]
    assert "stopped at epoch 1/3" in rows["cut"] and " 1/3 " in rows["cut"]
    assert "early stop" in rows["patient"]
    assert "running" in rows["live"]
    assert str(tmp_path / "output" / "models" / "better" / "best.pt") in rows["better"]
    with open(tmp_path / "runs.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["run"] for row in table][:2] == ["better", "good"]
    assert float(table[0]["validation_dice"]) == 0.95 and float(table[0]["train_seconds"]) > 0


def test_runs_says_so_when_there_are_none(tmp_path, capsys):
    code, out, _ = run_cli(["runs", "--output-dir", tmp_path / "nothing"], capsys)

    assert code == 0 and "No runs in" in out
