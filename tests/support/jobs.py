"""The job API's test helpers (tests/server/test_jobs.py, test_batch.py): waiting for a job, the
reference answer for an image, and killing a job consumer process mid-job."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Callable

import numpy as np
import pytest
import requests
from PIL import Image

from tests.support.serving import (
    LIVENESS_S,
    SIZE,
    ExportedModel,
    ServerProcess,
    normalise,
    redis_server_binary,
    softmax,
)
from tests.support.tools import in_ci

#: Skipped on a developer machine without Redis; in CI (tests.support.tools.in_ci) a missing
#: redis-server fails instead.
NEEDS_REDIS = pytest.mark.skipif(
    redis_server_binary() is None and not in_ci(), reason="needs Debian's redis-server (hack/setup.sh)"
)


def consumer_pid(server: ServerProcess, after: int = 0) -> int:
    """The pid of the latest job consumer that logged 'job consumer ready' (newer than ``after``)."""
    deadline = time.monotonic() + LIVENESS_S
    while time.monotonic() < deadline:
        pids = [json.loads(line)["pid"] for line in server.logs().splitlines() if '"job consumer ready"' in line]
        if pids and pids[-1] != after:
            return int(pids[-1])
        time.sleep(0.05)
    raise AssertionError("no job consumer became ready")


def expected_top(model: ExportedModel, data: bytes) -> tuple[int, float]:
    """The reference answer; square images larger than the model's input are resized with PIL's bilinear."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if img.size != (SIZE, SIZE):
        img = img.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    probs = softmax(model.logits(normalise(np.asarray(img))[None]))[0]
    best = int(np.argmax(probs))
    return best, float(probs[best])


def wait_job(server: ServerProcess, job_id: str, status: str = "completed") -> dict:
    deadline = time.monotonic() + LIVENESS_S
    while time.monotonic() < deadline:
        doc = requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()
        if doc["status"] == status:
            return doc
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {status}: {doc}")


def kill_consumer_mid_job(
    server: ServerProcess, body: dict, while_dead: Callable[[dict], None] | None = None
) -> tuple[str, dict]:
    """Submit `body` and SIGKILL the consumer once some, not all, images are done; (job id, job then).

    `while_dead` sees the job document after the kill, before a new consumer starts; this returns
    once the supervisor has started one.
    """
    for _ in range(3):  # bounded retries in case the whole job finished before it could be stopped
        pid = consumer_pid(server)
        job_id = requests.post(f"{server.url}/v1/jobs", json=body, timeout=60).json()["id"]
        deadline = time.monotonic() + LIVENESS_S
        done = 0
        while done == 0 and time.monotonic() < deadline:
            done = requests.get(f"{server.url}/v1/jobs/{job_id}?results=false", timeout=10).json()["done"]
        os.kill(pid, signal.SIGSTOP)  # freeze it, then look: is the job really unfinished?
        doc = requests.get(f"{server.url}/v1/jobs/{job_id}?results=false", timeout=10).json()
        if doc["done"] < doc["total"]:
            os.kill(pid, signal.SIGKILL)
            assert 0 < doc["done"] < doc["total"]
            if while_dead is not None:
                while_dead(doc)
            consumer_pid(server, after=pid)  # the supervisor started a new consumer
            return job_id, doc
        os.kill(pid, signal.SIGCONT)
    raise AssertionError("the job always finished before the consumer could be killed")
