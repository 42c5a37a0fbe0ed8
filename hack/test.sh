#!/usr/bin/env bash
# Runs every check and test: installs what is missing (hack/setup.sh), then lint (ruff), types
# (mypy --strict), the operator's import layers (import-linter), CRDs in sync with the models, the
# docs (generated references and benchmark tables in sync),
# unit tests, and the cluster tests against the local cluster (started when not running, and
# stopped again afterwards unless MODELOPS_KEEP_CLUSTER=1; MODELOPS_NO_CLUSTER=1 or
# `-m "not cluster"` leaves it alone). Extra arguments go to pytest,
# e.g. `hack/test.sh tests/operator` or `hack/test.sh -m "not cluster"`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
hack/setup.sh
py=.venv/bin
step() { printf '\n=== %s\n' "$*" >&2; }

# The cluster tests need the local cluster, whose start pushes the three images (hack/setup.sh has
# built them from their Dockerfiles) and loads them on the node: started here, outside pytest's
# per-test timeout, unless only other tests were asked for, and in the background while the static
# checks below run (they need no cluster, and much of its start is waiting: about a minute and a
# half less on a clean clone). Stopped at the end if started here; a start still under way when a
# check fails is stopped too, since half a cluster is of no use to the next run.
cluster="" cluster_ready=""
if [ "${MODELOPS_NO_CLUSTER:-}" != 1 ] && [[ " $* " != *"not cluster"* ]] \
   && ! python3 hack/cluster.py status >/dev/null 2>&1; then
  step "local cluster: hack/cluster.py up, in the background (images built from the Dockerfiles)"
  cluster_log=$(mktemp)
  python3 hack/cluster.py up >/dev/null 2>"$cluster_log" &
  cluster=$!
  stop_cluster() {
    if [ -z "$cluster_ready" ]; then
      kill "$cluster" 2>/dev/null || true
      wait "$cluster" 2>/dev/null || true
    elif [ "${MODELOPS_KEEP_CLUSTER:-}" = 1 ]; then
      return 0
    fi
    python3 hack/cluster.py down >/dev/null 2>&1 || true
  }
  trap stop_cluster EXIT
fi

step "ruff"
$py/ruff check .
$py/ruff format --check .
step "mypy --strict"
$py/mypy --strict operator/src trainer_image/src server_image/src hack/cluster.py hack/images.py hack/provisioner.py \
  hack/protogen.py
step "import layers"
$py/lint-imports
step "CRDs in sync with the models"
$py/python -m modelops_operator.crdgen --check
step "gRPC code in sync with its .proto"
$py/python hack/protogen.py --check
step "docs"
$py/mypy --strict hack/docgen.py hack/mkdocs_hooks.py
$py/python hack/docgen.py --check
$py/mypy --strict bench/report.py
$py/python bench/report.py --check   # the benchmark tables of README.md and docs/ match bench/results/
site=$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $py/mkdocs build --strict --quiet --site-dir "$site" && rm -rf "$site"

if [ -n "$cluster" ]; then
  step "local cluster: waiting for hack/cluster.py up"
  status=0; wait "$cluster" || status=$?
  cat "$cluster_log" >&2; rm -f "$cluster_log"
  [ "$status" = 0 ] || { echo "hack/cluster.py up failed with exit code $status (its log above)" >&2; exit 1; }
  cluster_ready=1
fi

# Two pytest-xdist workers (MODELOPS_TEST_WORKERS; 0 runs the tests in this process, as a debugger
# wants): the cluster tests share one cluster and one operator process, so they are one work unit
# that runs in one worker (the scheduler in tests/conftest.py), and the other tests run in the other worker beside
# them, on the CPU the cluster tests leave idle while they wait for pods, rollouts and the HPA's
# windows. `-n 0` in the arguments wins, as do other `-n` and `--dist` values.
step "pytest"
$py/pytest -n "${MODELOPS_TEST_WORKERS:-2}" --dist loadgroup --durations=30 "$@"   # the 30 slowest tests, for the CI budget
