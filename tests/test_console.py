"""One output channel: every message of the package goes through `logging`, the console prints it as a plain line."""
from __future__ import annotations

import ast
import logging
import sys
from pathlib import Path

from tqdm import tqdm

import carvana
from carvana.core import console
from cli_helpers import run_cli

PACKAGE = Path(carvana.__file__).parent
CONSOLE_MODULE = PACKAGE / "core" / "console.py"


def direct_writes(source: str) -> list[tuple[int, str]]:
    """(line, call) of every print(...), tqdm.write(...), sys.stdout.write(...) and sys.stderr.write(...) in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        call = ast.unparse(node.func)
        if call in ("print", "tqdm.write", "tqdm.tqdm.write", "sys.stdout.write", "sys.stderr.write"):
            found.append((node.lineno, call))
    return sorted(found)


def test_the_scan_sees_prints_and_writes_to_the_console_wherever_they_are():
    source = ("import sys\nfrom tqdm import tqdm\n"
              "def f():\n    print('a', file=sys.stderr)\n"
              "class C:\n    def g(self):\n        tqdm.write('b')\n"
              "sys.stdout.write('c')\nsys.stderr.write('d')\n"
              "writer.write('e')\nout.write(b'f')\n")
    assert direct_writes(source) == [(4, "print"), (7, "tqdm.write"), (8, "sys.stdout.write"),
                                     (9, "sys.stderr.write")]


def test_no_module_but_the_console_prints_or_writes_to_the_console_itself():
    offending = [f"{path.relative_to(PACKAGE.parent)}:{line} calls {call}"
                 for path in sorted(PACKAGE.rglob("*.py")) if path != CONSOLE_MODULE
                 for line, call in direct_writes(path.read_text())]
    assert not offending, "\n".join(offending) + "\n(log with logging.getLogger(__name__) instead)"


def test_information_goes_to_stdout_and_warnings_and_errors_to_stderr_as_plain_lines(capsys):
    log = logging.getLogger("carvana.somewhere")
    log.info("a plain line")
    log.warning("warning: a warning line")
    log.error("error: an error line")
    log.debug("not shown")
    captured = capsys.readouterr()
    assert captured.out == "a plain line\n"
    assert captured.err == "warning: a warning line\nerror: an error line\n"


def test_a_message_while_a_progress_bar_runs_is_written_and_the_bar_drawn_again_below_it(capsys):
    log = logging.getLogger("carvana.somewhere")
    with tqdm(total=4, desc="working", file=sys.stderr, mininterval=0, ascii=True) as bar:
        bar.update()
        capsys.readouterr()
        log.info("a line between two updates")
        captured = capsys.readouterr()
    assert captured.out == "a line between two updates\n"
    assert "working" in captured.err  # cleared for the line, then drawn again


def test_setting_the_console_up_again_keeps_one_handler():
    handler = console.setup_console()
    assert console.setup_console() is handler
    assert [h for h in logging.getLogger("carvana").handlers if isinstance(h, console.ConsoleHandler)] == [handler]


def test_a_commands_result_line_is_a_log_record_and_a_line_on_stdout(tmp_path, capsys, caplog):
    truth = tmp_path / "train_masks.csv"
    truth.write_text("img,rle_mask\naaa_01.jpg,1 10\nbbb_01.jpg,1 4\n")
    predictions = tmp_path / "predictions.csv"
    predictions.write_text("img,rle_mask\naaa_01.jpg,1 10\nbbb_01.jpg,1 4\n")
    with caplog.at_level(logging.INFO):
        code, out, err = run_cli(["score", predictions, "--truth", truth, "--image-size", "8x4"], capsys)
    line = f"{predictions}: mean Dice 1.00000 over 2 images of {truth}"
    assert code == 0 and out == line + "\n" and err == ""
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [("carvana.pipeline.files", logging.INFO, line)]


def test_the_one_line_error_of_the_command_line_is_a_log_record_and_the_only_line_on_stderr(tmp_path, capsys,
                                                                                            caplog):
    truth = tmp_path / "train_masks.csv"
    truth.write_text("img,rle_mask\naaa_01.jpg,1 10\n")
    missing = tmp_path / "missing.csv"
    code, out, err = run_cli(["score", missing, "--truth", truth, "--image-size", "8x4"], capsys)
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and str(missing) in err
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.ERROR, err.rstrip("\n"))]
