"""The documentation tooling: generated reference pages in sync, quoted reasons and tests checked,
links out of the site rewritten (hack/docgen.py, hack/mkdocs_hooks.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
REPO_URL = "https://github.com/modelops/modelops"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "hack" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docgen = _load("docgen")
hooks = _load("mkdocs_hooks")


def test_reference_pages_are_in_sync_and_quotes_exist():
    assert docgen.main(["--check"]) == 0, "run: .venv/bin/python hack/docgen.py"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("reason `PodPending`", None),
        ("reasons `RolledBack`", None),
        ("reason `overloaded`", None),  # the server's
        ("reason `Undecodable`", None),  # a cleaning rule's
        ("reason `PodIsPending`", "reason `PodIsPending` is defined nowhere in the code"),
        ("`tests/operator/test_docs.py::test_reference_pages_are_in_sync_and_quotes_exist`", None),
        ("`tests/e2e/test_admission.py::BAD`", None),  # a table of cases
        (
            "`tests/operator/test_docs.py::test_nothing`",
            "tests/operator/test_docs.py has no test (or table) test_nothing",
        ),
        ("`tests/operator/test_nowhere.py::test_x`", "tests/operator/test_nowhere.py does not exist"),
    ],
)
def test_quoted_reasons_and_tests_must_exist(text, problem):
    assert docgen.quoted_problems(text) == ([problem] if problem else [])


def test_every_condition_reason_is_on_the_reasons_page():
    page = (REPO / "docs" / "reference" / "conditions.md").read_text()
    for _, name, value, _ in docgen.documented_constants(docgen.conditions):
        assert f"| `{value}` |" in page, name


@pytest.mark.parametrize(
    ("target", "page", "url"),
    [
        ("concepts.md", "index.md", None),
        ("../reference/crds.md#dataset", "guides/datasets.md", None),
        ("#status", "concepts.md", None),
        ("https://example.com/x", "index.md", None),
        ("../CONTRIBUTING.md", "index.md", f"{REPO_URL}/blob/main/CONTRIBUTING.md"),
        (
            "../../server_image/README.md#metrics",
            "guides/serving.md",
            f"{REPO_URL}/blob/main/server_image/README.md#metrics",
        ),
    ],
)
def test_links_out_of_the_site_go_to_the_repository(target, page, url):
    assert hooks.outside_link(target, page, REPO_URL) == url


def test_images_out_of_the_site_are_served_raw():
    page = SimpleNamespace(file=SimpleNamespace(src_uri="benchmarks.md"))
    out = hooks.on_page_markdown("![plot](../bench/results/soak.png) [x](index.md)", page, {"repo_url": REPO_URL})
    assert out == f"![plot]({REPO_URL}/blob/main/bench/results/soak.png?raw=true) [x](index.md)"
