"""The tests' own rule for missing tools: a skip on a developer machine, a failure in CI, and no
test that skips for a missing tool on its own (it would pass silently in CI)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support import tools

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_a_missing_tool_fails_in_ci_naming_it_and_how_to_get_it(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(
        pytest.fail.Exception, match=r"^helm \(/x/helm\) is missing: run hack/setup.sh \(CI must have it\)$"
    ):
        tools.missing("helm (/x/helm)", "run hack/setup.sh")
    with pytest.raises(pytest.fail.Exception, match=r"^the Python module no_such_module_x is missing: pip install it"):
        tools.import_or_missing("no_such_module_x", "pip install it")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_a_missing_tool_skips_outside_ci(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match=r"^promtool is missing: build it$"):
        tools.missing("promtool", "build it")


def test_the_ci_script_sets_ci_so_that_missing_tools_fail():
    out = subprocess.run(
        ["bash", "-c", 'source <(sed -n "/^export CI=/p" .ci/run); echo "$CI"'],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "true"


#: Skips allowed outside tests/support/tools.py: they are about hardware, not a missing tool.
HARDWARE = re.compile(r"CUDA|GPU", re.IGNORECASE)


def test_no_test_skips_for_a_missing_tool_on_its_own():
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        if path == REPO / "tests" / "support" / "tools.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"importorskip\(|pytest\.skip\(", line) and not HARDWARE.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == [], "use tests.support.tools.missing() or import_or_missing():\n" + "\n".join(offenders)
