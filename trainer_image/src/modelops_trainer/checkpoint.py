"""Checkpoints: the complete training state, written atomically, read back for an exact resume.

`<output>/checkpoints/last.pt` is the state to resume from: model, optimizer, LR schedule,
gradient scaler, EMA, the position in the data (epoch and micro-batches done in it), the partial
sums of the epoch's training metrics, the metric history, the best value so far, and every
process's random generator states. It is replaced atomically, so a pod killed while writing
leaves the previous one intact. `<output>/checkpoints/best.pt` holds the weights of the best
epoch by the objective (the EMA weights when EMA is on) and its metrics; export starts from it.

Files are plain `torch.save` dicts of tensors and Python values and load with
`weights_only=True`: reading a checkpoint never runs code from it.
"""

from __future__ import annotations

import io
import random
from typing import Any, cast

import numpy as np
import torch

from modelops_trainer import distributed, storage
from modelops_trainer.distributed import Runtime
from modelops_trainer.errors import CheckpointError

FORMAT = "modelops.checkpoint/v1"
LAST = "checkpoints/last.pt"
BEST = "checkpoints/best.pt"


def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's random generator states (torch CPU and CUDA, numpy, Python)."""
    np_state = cast("tuple[Any, ...]", np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_rng(runtime: Runtime, device: torch.device) -> list[dict[str, Any]]:
    """Every process's generator states, in rank order (a collective).

    They travel as `torch.save` bytes: pickling tensors inside `all_gather_object` directly
    fails to unpickle on the receiving side in this PyTorch version.
    """
    buf = io.BytesIO()
    torch.save(capture_rng(device), buf)
    blobs = distributed.gather_objects(runtime, buf.getvalue())
    return [torch.load(io.BytesIO(blob), weights_only=True) for blob in blobs]


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Put back what `capture_rng` took."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    random.setstate(_tuples(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuples(value: Any) -> Any:
    # random.setstate wants tuples; a round trip through the unpickler may give lists.
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def save(uri: str, state: dict[str, Any]) -> None:
    """Write `state` (plus the format marker) to `uri` atomically."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    storage.write_bytes_atomic(uri, buf.getvalue())


def load(uri: str) -> dict[str, Any] | None:
    """The checkpoint at `uri`, or None when there is none; CheckpointError when unreadable."""
    if not storage.exists(uri):
        return None
    try:
        data = storage.read_bytes(uri)
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {uri} cannot be read ({exc}); delete it to start over") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{uri} is not a {FORMAT} checkpoint; delete it to start over")
    return state
