"""modelops' data-preparation and training programs, run in the Dataset's Job and in the
TrainingRun's PyTorchJobs (`python -m modelops_trainer.prepare`, `python -m modelops_trainer.train`).

The programs arrive with the Dataset and trainer issues; this package fixes their home and
dependencies (PyTorch, torchvision, ONNX).

Importing it makes OpenMP's idle threads sleep when the container has no CPU quota
(`cgroup.openmp_wait_policy`): done here because libgomp reads the setting once, when PyTorch loads,
and every entry point (the programs, torchrun's workers) imports this package first.
"""

from modelops_trainer import cgroup

cgroup.openmp_wait_policy()

__version__ = "0.1.0"
