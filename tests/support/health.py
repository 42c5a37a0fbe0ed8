"""kstatus's and Argo CD's verdicts on objects, by their own code: the `modelops-health` harness
built from hack/gomod/health (hack/build-binaries.sh health)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.support.tools import missing

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache" / "modelops")) / "bin"
HARNESS = BIN / "modelops-health"
ARGOCD_CM = REPO / "charts" / "argocd" / "argocd-cm-snippet.yaml"


def judge(objects: list[dict[str, Any]], argocd_cm: Path = ARGOCD_CM) -> list[dict[str, Any]]:
    """kstatus's and Argo CD's verdicts on `objects`, one harness run for all."""
    if not HARNESS.exists():
        missing(f"modelops-health ({HARNESS})", "build it with `hack/build-binaries.sh health` (hack/setup.sh does)")
    lines = "".join(json.dumps(o) + "\n" for o in objects)
    done = subprocess.run(
        [HARNESS, "-argocd-cm", argocd_cm], input=lines, capture_output=True, text=True, check=True, timeout=120
    )
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == len(objects), done.stderr
    return answers
