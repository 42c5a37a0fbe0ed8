"""modelops: a Kubernetes operator for the life of an image-classification model.

Layers, lowest first (enforced by the import-linter contract in the root pyproject.toml):

    api/        pydantic models of the three kinds, condition types and reasons
    builders/   pure functions: a validated object -> the desired child objects
    reconcile/  pure functions: spec + observed state -> status and a plan of actions
    kube/       the only code that talks to the API server
    handlers    kopf registration: validate at the boundary, reconcile, execute, patch status
"""

__version__ = "0.1.0"
