"""`modelops_build_info`: which operator build is running, as a Prometheus info metric.

    modelops_build_info{version="0.1.0",git_commit="3f2c...",python_version="3.11.14"} 1

The commit comes from `MODELOPS_GIT_COMMIT`, which the operator image sets from its `GIT_COMMIT`
build argument (`docker build --build-arg GIT_COMMIT=$(git rev-parse HEAD) ...`); "unknown" when
the build did not say.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping

import prometheus_client

from modelops_operator import __version__

COMMIT_ENV = "MODELOPS_GIT_COMMIT"

BUILD_INFO = prometheus_client.Info(
    "modelops_build",
    "The running operator's build in its labels: version, git_commit (unknown when the image build "
    "did not pass GIT_COMMIT) and python_version; always 1.",
)


def labels(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The build's labels, the commit read from `environ` (the process environment by default)."""
    env = os.environ if environ is None else environ
    return {
        "version": __version__,
        "git_commit": env.get(COMMIT_ENV, "").strip() or "unknown",
        "python_version": platform.python_version(),
    }


def publish(environ: Mapping[str, str] | None = None) -> None:
    """Set `modelops_build_info` (once at startup; setting it again replaces the labels)."""
    BUILD_INFO.info(labels(environ))
