"""Where this process runs: rank, world, device, and the process group.

torchrun and the Kubeflow PyTorchJob both describe a process by environment variables:
`MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK` (global), and `LOCAL_RANK` (torchrun; a
PyTorchJob pod running one process has none, which means 0). With `WORLD_SIZE` unset or 1 the
program runs alone and forms no process group. The backend is NCCL when the process drives a GPU
and gloo on CPU. Rank 0 alone writes checkpoints and results; the others compute.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist

from modelops_trainer import cgroup
from modelops_trainer.errors import ConfigError, DistributedError


@dataclass(frozen=True)
class Runtime:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes results (global rank 0)."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        """nccl on GPUs, gloo on CPUs."""
        return "nccl" if self.device.type == "cuda" else "gloo"


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from None


def detect(env: Mapping[str, str], device: Literal["auto", "cpu", "cuda"]) -> Runtime:
    """The runtime described by `env` (no side effects); DistributedError when it is incomplete."""
    world = _int_env(env, "WORLD_SIZE", 1)
    rank = _int_env(env, "RANK", 0)
    local_rank = _int_env(env, "LOCAL_RANK", 0)
    local_world = _int_env(env, "LOCAL_WORLD_SIZE", 1)  # a PyTorchJob pod without torchrun: 1
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} and WORLD_SIZE={world} do not describe a process of the job")
    if world > 1:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not env.get(v)]
        if missing:
            raise DistributedError(f"WORLD_SIZE={world} but {' and '.join(missing)} unset: cannot reach the master")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError("device is 'cuda' but no CUDA device is visible to this process")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DistributedError(f"LOCAL_RANK={local_rank} but only {count} GPU(s) are visible")
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    return Runtime(rank, world, local_rank, local_world, dev)


def available_cpus() -> int:
    """CPUs this container may use: its CPU affinity, capped by its cgroup's CPU quota (v2 or v1).

    A pod limited to 4 CPUs on a 64-core node still sees 64 CPUs in its affinity mask; sizing
    thread pools by that makes the kernel throttle it.
    """
    return cgroup.cpu_limit()


def setup(runtime: Runtime, *, timeout_s: float = 1800) -> None:
    """Form the process group (when distributed), pin the GPU and size CPU thread pools."""
    if runtime.device.type == "cuda":
        torch.cuda.set_device(runtime.device)
    elif "OMP_NUM_THREADS" not in os.environ:
        # Share the CPUs among the processes of this node instead of oversubscribing them.
        torch.set_num_threads(max(1, available_cpus() // runtime.local_world_size))
    if runtime.distributed and not dist.is_initialized():
        try:
            dist.init_process_group(
                backend=runtime.backend,
                timeout=datetime.timedelta(seconds=timeout_s),
                device_id=runtime.device if runtime.device.type == "cuda" else None,
            )
        except Exception as exc:
            raise DistributedError(f"cannot form the {runtime.backend} process group: {exc}") from exc


def teardown() -> None:
    """Leave the process group, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(runtime: Runtime) -> None:
    """Wait for every process (no-op alone)."""
    if runtime.distributed:
        dist.barrier()


def all_reduce_sum(runtime: Runtime, tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `tensor` over all processes (in place; returned for chaining)."""
    if runtime.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(runtime: Runtime, flag: bool) -> bool:
    """Whether `flag` is true on any process (a collective: every process must call it)."""
    if not runtime.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=runtime.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(runtime: Runtime, obj: Any) -> list[Any]:
    """`obj` from every process, in rank order (every process gets the list)."""
    if not runtime.distributed:
        return [obj]
    out: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(runtime: Runtime, obj: Any) -> Any:
    """Rank 0's `obj` on every process."""
    if not runtime.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
