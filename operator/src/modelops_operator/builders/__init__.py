"""Pure builders: a validated object -> the child objects it should have (Jobs, PyTorchJobs,
Deployments, ...). No I/O; each builder documents its naming and label choices.

    common           names, labels, owner references, the restricted Pod Security profile
    dataset          a Dataset's preparation Job and the config it hands the program
    trainingrun      a trial's PyTorchJob and the training config it hands the trainer
    modeldeployment  the server Deployments (stable, canary), Services, PDB, HPA, ServiceMonitor
    alerts           a ModelDeployment's PrometheusRule
"""
