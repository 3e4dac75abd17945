"""The stages' import direction: prediction sits beside training, never on top of it."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import carvana

PACKAGE = Path(carvana.__file__).parent


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import in `source`, a module of `package`; those inside functions included.

    `from carvana import train` counts as importing `carvana.train` too; relative imports are
    resolved against `package`.
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def imports_training(module: str) -> bool:
    return module == "carvana.train" or module.startswith("carvana.train.")


def test_the_scan_sees_imports_inside_functions_from_the_package_and_relative_ones():
    source = ("import torch\n"
              "def f():\n    from carvana import train\n"
              "def g():\n    import carvana.train.classifier\n"
              "from ..train.checkpoint import ModelCheckpoint\n"
              "from carvana.predict import hooks\n")
    found = [module for _, module in imported_modules(source, "carvana.predict")]
    assert sorted(m for m in found if imports_training(m)) == [
        "carvana.train", "carvana.train.checkpoint", "carvana.train.checkpoint.ModelCheckpoint",
        "carvana.train.classifier"]
    assert not imports_training("carvana.predict.hooks") and not imports_training("carvana.trainer")


def test_no_prediction_module_imports_the_training_stage():
    offending = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        for path in sorted((PACKAGE / "predict").rglob("*.py"))
        for line, module in imported_modules(path.read_text(), ".".join(path.relative_to(PACKAGE.parent).parent.parts))
        if imports_training(module)
    ]
    assert not offending, "\n".join(offending)


def test_importing_every_prediction_module_loads_nothing_of_the_training_stage():
    modules = [f"carvana.predict.{path.stem}" for path in sorted((PACKAGE / "predict").glob("*.py"))
               if path.stem != "__init__"]
    script = ("import sys\n" + "".join(f"import {module}\n" for module in modules)
              + "print([m for m in sys.modules if m == 'carvana.train' or m.startswith('carvana.train.')])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PACKAGE.parent,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# The pipeline's stages, lowest first; a module imports only from its own folder and lower stages.
# Training and prediction share a rank: they sit side by side and neither imports the other.
STAGES = {"core": 0, "kaggle": 1, "sample": 2, "data": 3, "models": 4, "run": 5, "predict": 6, "train": 6,
          "submission": 7, "cutout": 7, "pipeline": 8}  # pipeline/: the commands' stages put together
TOP = 9  # carvana/cli.py, carvana/cli_parser.py, carvana/runs_table.py: the commands


def stage_of(module: str) -> tuple[str, int]:
    """(folder, rank) of a module of the package: its folder under carvana/, or a top-level module."""
    folder = module.split(".")[1]
    return (folder, STAGES[folder]) if folder in STAGES else ("", TOP)


def test_every_folder_under_the_package_is_a_stage_of_the_pipeline():
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert folders == set(STAGES)


def test_no_stage_imports_a_higher_one_or_its_sibling():
    offending = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module_path = path.relative_to(PACKAGE.parent)
        package = ".".join(module_path.parent.parts)
        folder, rank = stage_of(".".join(module_path.with_suffix("").parts))
        for line, module in imported_modules(path.read_text(), package):
            if not module.startswith("carvana.") or module.count(".") < 1:
                continue
            other, other_rank = stage_of(module)
            if other_rank > rank or (other_rank == rank and other != folder):
                offending.append(f"{module_path}:{line} ({folder or 'top'}) imports {module} ({other or 'top'})")
    assert not offending, "\n".join(offending)
