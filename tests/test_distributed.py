"""`torchrun --nproc_per_node=N main.py ...`: several processes, one run, on the CPU (gloo), on this machine.

What a user of torchrun relies on: the run leaves one set of files and prints once, as `python
main.py` would; the same weights give the same submission and the same validation Dice whatever the
number of processes; a process that dies leaves the previous submission as it was; checkpoints move
between 1 and N processes; and two torchrun commands can be the two "nodes" of one run.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cli_helpers import epochs_printed
from conftest import REPO_ROOT
from data_factory import make_tiny_carvana
from torchrun_helpers import (MAIN, child_env, free_port, run_torchrun, skip_without_gloo, start_torchrun,
                              stop_session, worker_pid)

pytestmark = pytest.mark.slow

skip_without_gloo()

SMOKE_TEST = "OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 main.py "


def readme_smoke_test() -> list[str]:
    """The flags of the README's CPU smoke test (`## Scaling out`), which the shared run below runs as written."""
    line = next(line for line in (REPO_ROOT / "README.md").read_text().splitlines() if line.startswith(SMOKE_TEST))
    return line[len(SMOKE_TEST):].split()


TINY_RUN = readme_smoke_test()
PARTS = ".submit.csv.gz.parts"  # the hidden folder of the part files beside output/submit.csv.gz


def run_main(args: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python main.py ARGS`: one process, no torchrun."""
    return subprocess.run([sys.executable, str(MAIN), *map(str, args)], cwd=cwd, env=child_env(),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def read_submission(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.reader(f))


def sample_submission_ids(workdir: Path) -> list[str]:
    with open(workdir / "input" / "sample" / "sample_submission.csv", newline="") as f:
        return [row[0] for row in list(csv.reader(f))[1:]]


def leftovers(folder: Path) -> list[str]:
    """Part folders and temporary files under `folder` (none once a command has ended)."""
    return [str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name.startswith((".tmp-", ".submit"))]


def copy_of_run(workdir: Path, into: Path) -> Path:
    """A copy of a finished run's folder (data, checkpoints, logs), to change without touching the original."""
    shutil.copytree(workdir, into)
    return into


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's smoke test: `torchrun --standalone --nproc_per_node=2 main.py` on the tiny sample, 1 epoch."""
    workdir = tmp_path_factory.mktemp("torchrun")
    return workdir, run_torchrun(TINY_RUN, workdir)


@pytest.fixture(scope="module")
def run_folder(two_process_run) -> Path:
    workdir, result = two_process_run
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir


@pytest.fixture(scope="module")
def one_process_prediction(run_folder) -> Path:
    """`python main.py predict` with the two-process run's best.pt."""
    submission = run_folder / "one-process" / "submit.csv.gz"
    result = run_main(["predict", "--checkpoint", "output/models/tiny/best.pt", "--submission", submission,
                       "--workers", "0"], run_folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return submission


@pytest.fixture(scope="module")
def two_process_prediction(run_folder) -> tuple[Path, subprocess.CompletedProcess]:
    """`torchrun ... main.py predict` with the same best.pt."""
    submission = run_folder / "two-processes" / "submit.csv.gz"
    result = run_torchrun(["predict", "--checkpoint", "output/models/tiny/best.pt", "--submission", submission,
                           "--workers", "0"], run_folder)
    return submission, result


# ------------------------------------------------------------------ one run, one set of files


def test_a_two_process_run_ends_well_and_speaks_once(two_process_run):
    workdir, result = two_process_run
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert epochs_printed(out) == [1], out
    for line in ("Training finished its 1 epoch", "Predicting 96 test images by 2 processes", "Done in",
                 "output/submit.csv.gz: valid (96 rows"):
        assert out.count(line) == 1, f"{line!r} should be printed once:\n{out}"
    assert "Traceback" not in result.stderr and "error" not in result.stderr.lower(), result.stderr


def test_a_two_process_run_writes_one_set_of_files(run_folder):
    models = run_folder / "output" / "models"
    assert [p.name for p in models.iterdir()] == ["tiny"]
    assert (models / "tiny" / "best.pt").is_file() and (models / "tiny" / "last.pt").is_file()

    assert [p.name for p in (run_folder / "logs").iterdir()] == ["tiny"]
    events = list((run_folder / "logs" / "tiny").glob("events.out.tfevents.*"))
    writers = {name.split(".")[-2] for name in (p.name for p in events)}  # ...<time>.<host>.<pid>.<n>
    assert events and len(writers) == 1, f"TensorBoard events from more than one process: {events}"

    validation = run_folder / "output" / "validation"
    assert [p.name for p in validation.iterdir()] == ["tiny"]
    with open(validation / "tiny" / "valid_truth.csv", newline="") as f:
        truth = [row[0] for row in list(csv.reader(f))[1:]]
    predicted = [row[0] for row in read_submission(validation / "tiny" / "valid_predictions.csv.gz")[1:]]
    assert len(truth) == 16 and len(set(truth)) == 16
    assert predicted == truth, "each validation photo predicted once, in order"

    assert leftovers(run_folder / "output") == []


def test_a_two_process_submission_has_the_ids_of_a_one_process_one(run_folder, one_process_prediction):
    rows = read_submission(run_folder / "output" / "submit.csv.gz")
    assert rows[0] == ["img", "rle_mask"]
    ids = [row[0] for row in rows[1:]]
    assert ids == sample_submission_ids(run_folder)
    assert ids == [row[0] for row in read_submission(one_process_prediction)[1:]]


# ------------------------------------------------------------------ same weights, same results


def test_the_same_weights_predict_the_same_submission_with_two_processes_as_with_one(
        two_process_prediction, one_process_prediction):
    submission, result = two_process_prediction
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Predicting 96 test images by 2 processes") == 1, result.stdout
    with gzip.open(submission, "rb") as two, gzip.open(one_process_prediction, "rb") as one:
        assert two.read() == one.read()
    assert leftovers(submission.parent) == []


VALIDATE_SCRIPT = """
    import json, pathlib, sys
    from carvana.core import distributed
    from carvana.data.datasets import make_valid_loader
    from carvana.data.layout import load_carvana_data
    from carvana.run.checkpoint import Checkpoint
    from carvana.train.classifier import CarvanaClassifier

    checkpoint_path, data_dir, names, out = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
    distributed.start("cpu")
    checkpoint = Checkpoint.load(checkpoint_path)
    config = checkpoint.recipe.replace(device="cpu", workers=0, amp="off", memory_format="channels_last")
    classifier = CarvanaClassifier(config, progress=False)
    classifier.load_weights(checkpoint)
    loader = make_valid_loader(load_carvana_data(data_dir, need_test=False), names, config.geometry, config,
                               shard=True)
    metrics = classifier.validate(loader)
    rank = distributed.current().rank  # each rank its own file: two processes' prints would interleave
    pathlib.Path(out, f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "images": len(loader.sampler),
                                                                  **metrics}))
    distributed.stop()
"""


def validate_in_this_process(checkpoint_path: Path, data_dir: Path, names: list[str]) -> dict[str, float]:
    from carvana.data.datasets import make_valid_loader
    from carvana.data.layout import load_carvana_data
    from carvana.run.checkpoint import Checkpoint
    from carvana.train.classifier import CarvanaClassifier

    checkpoint = Checkpoint.load(checkpoint_path)
    # One layout for both: `auto` may time another one here, where torch has more threads than under torchrun.
    config = checkpoint.recipe.replace(device="cpu", workers=0, amp="off", memory_format="channels_last")
    classifier = CarvanaClassifier(config, progress=False)
    classifier.load_weights(checkpoint)
    return classifier.validate(make_valid_loader(load_carvana_data(data_dir, need_test=False), names,
                                                 config.geometry, config))


def test_validation_dice_of_two_processes_is_that_of_one_each_image_counted_once(run_folder, tmp_path):
    with open(run_folder / "output" / "validation" / "tiny" / "valid_truth.csv", newline="") as f:
        names = [row[0] for row in list(csv.reader(f))[1:]][:15]  # odd: the shares are 8 and 7 photos
    checkpoint = run_folder / "output" / "models" / "tiny" / "best.pt"
    data_dir = run_folder / "input" / "sample"
    script = tmp_path / "validate_sharded.py"
    script.write_text(textwrap.dedent(VALIDATE_SCRIPT))

    result = run_torchrun([checkpoint, data_dir, ",".join(names), tmp_path], tmp_path, program=script)
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["images"] for r in ranks] == [8, 7]

    assert ranks[0]["val_dice"] == ranks[1]["val_dice"] and ranks[0]["val_loss"] == ranks[1]["val_loss"]

    one = validate_in_this_process(checkpoint, data_dir, names)
    assert ranks[0]["val_dice"] == pytest.approx(one["val_dice"], rel=1e-6, abs=0)
    assert ranks[0]["val_loss"] == pytest.approx(one["val_loss"], rel=1e-6, abs=0)


# ------------------------------------------------------------------ a process that dies


def wait_until_both_ranks_write_their_parts(launcher: subprocess.Popen, parts: Path) -> int:
    """Wait until ranks 0 and 1 of `launcher` both predict (each has its part's temporary file, named with
    its pid, in `parts`); returns rank 1's pid."""
    deadline = time.monotonic() + 120
    while True:
        pids = [worker_pid(launcher, rank) for rank in (0, 1)]
        names = [p.name for p in parts.iterdir()] if parts.is_dir() else []
        if None not in pids and all(any(f".{pid}." in name for name in names) for pid in pids):
            return pids[1]
        if launcher.poll() is not None or time.monotonic() > deadline:
            out, err = stop_session(launcher)
            pytest.fail(f"the two ranks never both predicted (exit {launcher.returncode}):\n{out}\n{err}")
        time.sleep(0.005)


def test_a_process_killed_while_predicting_keeps_the_previous_submission(run_folder, tmp_path):
    data_dir = make_tiny_carvana(tmp_path, cars=1, test_cars=30)  # 480 test photos: time to catch rank 1 at it
    submission = tmp_path / "kept" / "submit.csv.gz"
    submission.parent.mkdir()
    shutil.copy(run_folder / "output" / "submit.csv.gz", submission)
    previous = submission.read_bytes()
    parts = submission.parent / f".{submission.name}.parts"

    launcher = start_torchrun(["predict", "--checkpoint", run_folder / "output" / "models" / "tiny" / "best.pt",
                               "--data-dir", data_dir, "--submission", submission, "--workers", "0"], tmp_path)
    try:
        rank1 = wait_until_both_ranks_write_their_parts(launcher, parts)
        assert not (parts / "part-1-of-2.csv.gz").exists(), "rank 1 finished before it was killed: more test photos"
        os.kill(rank1, signal.SIGKILL)
        out, err = launcher.communicate(timeout=120)
    finally:
        stop_session(launcher)

    assert launcher.returncode != 0
    assert submission.read_bytes() == previous
    assert sorted(p.name for p in submission.parent.iterdir()) == ["submit.csv.gz"], "no parts, no temp files"
    assert "valid (" not in out
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert ours == [f"error: prediction stopped by SIGTERM (under torchrun: another process of the run failed, "
                    f"or the run was stopped); {submission} is kept as it was"], err
    assert "exitcode  : -9" in err and "Signal 9 (SIGKILL) received by PID" in err, "torchrun names the dead rank"


# ------------------------------------------------------------------ checkpoints between 1 and N processes


@pytest.fixture(scope="module")
def resumed_in_one_process(run_folder, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The two-process run's last.pt resumed by `python main.py train --resume ... --epochs 2`, in a copy."""
    workdir = copy_of_run(run_folder, tmp_path_factory.mktemp("resumed") / "run")
    return workdir, run_main(["train", "--resume", "output/models/tiny/last.pt", "--epochs", "2"], workdir)


def test_a_two_process_checkpoint_resumes_in_one_process(resumed_in_one_process):
    _, result = resumed_in_one_process
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming run tiny from output/models/tiny/last.pt: epoch 1" in result.stdout
    assert epochs_printed(result.stdout) == [2]
    assert "Training finished all 2 epochs" in result.stdout


def test_a_one_process_checkpoint_resumes_with_two_processes(resumed_in_one_process):
    workdir, first = resumed_in_one_process
    assert first.returncode == 0, first.stdout + first.stderr
    result = run_torchrun(["train", "--resume", "output/models/tiny/last.pt", "--epochs", "3"], workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("resuming run tiny from output/models/tiny/last.pt: epoch 2") == 1, result.stdout
    assert epochs_printed(result.stdout) == [3]
    assert "Training finished all 3 epochs" in result.stdout


# ------------------------------------------------------------------ two "nodes"


def test_two_torchrun_commands_are_the_two_nodes_of_one_run(run_folder, tmp_path):
    workdir = tmp_path / "shared"
    shutil.copytree(run_folder / "input", workdir / "input")  # the sample as it was generated
    meeting = ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
    nodes = [start_torchrun(TINY_RUN, workdir, nproc=1, rendezvous=[*meeting, "--node-rank", str(rank)])
             for rank in (0, 1)]
    try:
        results = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            stop_session(node)

    for node, (out, err) in zip(nodes, results):
        assert node.returncode == 0, out + err
    outputs = [out for out, _ in results]
    assert sum("Done in" in out for out in outputs) == 1, "one node speaks for the run"
    assert sum(epochs_printed(out) == [1] for out in outputs) == 1
    assert any("output/submit.csv.gz: valid (96 rows" in out for out in outputs), outputs
    rows = read_submission(workdir / "output" / "submit.csv.gz")
    assert [row[0] for row in rows[1:]] == sample_submission_ids(workdir)
    assert leftovers(workdir / "output") == []
