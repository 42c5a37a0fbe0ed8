"""Fixtures shared by the operator's unit tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """hack/cluster.py as a module (no cluster is started), with its state in tmp_path and a
    stand-in cluster CA there (the aggregated APIs' manifests read its file)."""
    spec = importlib.util.spec_from_file_location("modelops_cluster_script", REPO / "hack" / "cluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "STATE", tmp_path)
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n")
    return module
