"""modelops' data-preparation and training programs, run in the Dataset's Job and in the
TrainingRun's PyTorchJobs (`python -m modelops_trainer.prepare`, `python -m modelops_trainer.train`).

The programs arrive with the Dataset and trainer issues; this package fixes their home and
dependencies (PyTorch, torchvision, ONNX).
"""

__version__ = "0.1.0"
