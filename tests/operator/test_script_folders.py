"""The script folders (bench/, hack/) go on sys.path: Python puts a script's own folder first when it
runs it, and tests put bench/ there to import its modules. A script named like a module the project
imports would then replace that module for everything imported after it: `bench/grpc.py` once made
`import grpc` load the benchmark, and the gRPC tests failed at collection (or not, depending on
which test module pytest collected first)."""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("bench", "hack")


def shadowing(folder: Path) -> list[str]:
    """The scripts in `folder` named like a module found elsewhere on sys.path or in the standard
    library: the modules they would hide."""
    elsewhere = [p for p in sys.path if Path(p or ".").resolve() != folder.resolve()]
    return sorted(
        script.name
        for script in folder.glob("*.py")
        if script.stem in sys.stdlib_module_names
        or importlib.machinery.PathFinder.find_spec(script.stem, elsewhere) is not None
    )


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_script_takes_the_name_of_a_module_found_elsewhere(folder: str) -> None:
    assert shadowing(REPO / folder) == [], f"{folder}/: rename the scripts that would hide these modules"


def test_the_check_sees_a_script_that_would_shadow_a_module(tmp_path: Path) -> None:
    """The check itself can fail: a folder holding `grpc.py` (grpcio) and `json.py` is caught."""
    for name in ("grpc.py", "json.py", "our_own_benchmark.py"):
        (tmp_path / name).write_text("")
    assert shadowing(tmp_path) == ["grpc.py", "json.py"]
