"""Hooks for the whole suite.

hack/test.sh runs pytest in two pytest-xdist workers (`-n 2 --dist loadgroup`). The cluster tests
(everything under tests/e2e/) share one local cluster and one operator process, started by session
fixtures (tests/e2e/conftest.py), so they must all run in one worker, one after the other: the
scheduler below makes them one work unit, and spreads every other test over the workers on its own.
(xdist's own `xdist_group` marker cannot do it: xdist 3.8 renames the node IDs through an attribute
pytest 9 no longer reads, so the marker is silently ignored.)
"""

from __future__ import annotations

from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling

#: Where the cluster tests are, as a prefix of their node IDs (relative to the repository root).
CLUSTER_TESTS = "tests/e2e/"


class ClusterTestsInOneWorker(LoadGroupScheduling):
    """xdist's loadgroup scheduling with every cluster test in one work unit, `cluster`."""

    def _split_scope(self, nodeid: str) -> str:
        return "cluster" if nodeid.startswith(CLUSTER_TESTS) else str(super()._split_scope(nodeid))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None  # xdist's own; the cluster fixture's lock refuses a second worker with cluster tests
    return ClusterTestsInOneWorker(config, log)
