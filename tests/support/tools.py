"""A missing tool skips a test on a developer machine and fails it in CI.

CI sets `CI` (GitHub Actions, GitLab and most others do, and the repository's own `.ci/run`
exports `CI=true`); there, every tool the tests need is installed by hack/setup.sh, so one that is
missing is a broken setup, and a test that skipped would pass silently without having checked
anything. Every test that needs a tool beyond the venv's packages goes through `missing()` or
`in_ci()` (tests/operator/test_test_tools.py checks that none skips on its own).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether `CI` is set to anything but empty, 0, false or no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str, how: str) -> NoReturn:
    """Skip (fail under CI): `what` is not there; `how` says how to get it."""
    message = f"{what} is missing: {how}"
    if in_ci():
        pytest.fail(f"{message} (CI must have it)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def import_or_missing(module: str, how: str) -> ModuleType:
    """`module`, or `missing()` when it cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"the Python module {module}", how)
