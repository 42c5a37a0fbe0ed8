"""A missing tool skips a test on a developer machine and fails it in CI.

CI sets `CI` (GitHub Actions, GitLab and most others do); there, every tool the tests need is
installed by hack/setup.sh, so one that is missing is a broken setup, and a test that skipped would
pass silently without having checked anything.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def missing(what: str, how: str) -> None:
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
        raise
