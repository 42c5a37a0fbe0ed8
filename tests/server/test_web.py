"""The web page, end to end in a real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.serving import CLASSES, ExportedModel, ServerProcess, image_bytes, normalise, pixels_of, softmax
from tests.support.tools import in_ci

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    # Skipped on a developer machine without Chromium; in CI (tests.support.tools.in_ci) a missing
    # browser fails instead.
    pytest.mark.skipif(not Path(CHROMIUM).exists() and not in_ci(), reason="needs Debian's chromium (hack/setup.sh)"),
]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        context = browser.new_context()
        yield context.new_page()
        context.close()
        browser.close()


def test_upload_shows_top_labels_and_version(page, server: ServerProcess, model_v1: ExportedModel, tmp_path: Path):
    from playwright.sync_api import expect  # noqa: PLC0415

    data = image_bytes(4242)
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    probs = softmax(model_v1.logits(normalise(pixels_of(data))[None]))[0]
    order = list(np.argsort(-probs))

    page.goto(server.url + "/")
    expect(page.locator("#model")).to_have_text("tiny-cnn")
    page.set_input_files("#file", str(path))
    rows = page.locator("#results tr.prediction")
    expect(rows).to_have_count(5, timeout=30_000)
    labels = rows.locator("td.label").all_inner_texts()
    scores = [float(s) for s in rows.locator("td.score").all_inner_texts()]
    assert labels == [CLASSES[i] for i in order]
    assert scores[0] == pytest.approx(probs[order[0]], abs=1e-4)
    expect(page.locator("#version")).to_have_text("v1")
    page.screenshot(path=str(tmp_path / "page.png"))


def test_drop_of_a_non_image_shows_the_error(page, server: ServerProcess, tmp_path: Path):
    from playwright.sync_api import expect  # noqa: PLC0415

    page.goto(server.url + "/")
    # Drop a text file on the drop zone, as a person dragging the wrong file would.
    handle = page.evaluate_handle(
        """() => { const dt = new DataTransfer();
                   dt.items.add(new File(["hello"], "notes.png", {type: "image/png"})); return dt; }"""
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": handle})
    expect(page.locator("#error")).to_contain_text("415", timeout=30_000)
    expect(page.locator("#error")).to_contain_text("cannot identify the image format")
    assert page.locator("#results").is_hidden()


def test_page_is_served_as_html(server: ServerProcess):
    r = requests.get(server.url + "/", headers={"Accept": "text/html"}, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "tiny-cnn" in r.text and "__MODEL_NAME__" not in r.text
