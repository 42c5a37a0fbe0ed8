"""Pure builders: a validated object -> the child objects it should have (Jobs, PyTorchJobs,
Deployments, ...). No I/O; each builder documents its naming and label choices.

Empty in this release: the children arrive with the Dataset, TrainingRun and ModelDeployment
reconcilers.
"""
