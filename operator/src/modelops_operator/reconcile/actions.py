"""The reconcile contract shared by the three kinds: what a reconcile returns.

A reconcile is a pure function of an object's spec, its stored status and what the controller
observed; it returns an `Outcome`: the status the object should have, the `Action`s that get the
world there (one API call, registry call or metric update each, carried out by
`controllers.execute` in order) and the `Event`s to post on the object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from modelops_operator.api.common import StatusBase

S = TypeVar("S", bound=StatusBase)

Verb = Literal["create", "apply", "delete", "suspend", "resume", "patch", "annotate", "register", "gauge"]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the object."""

    type: str  # "Normal" or "Warning"
    reason: str
    message: str


@dataclass(frozen=True)
class Registration:
    """A model version to record in an MLflow registry (idempotent by digest)."""

    tracking_uri: str
    model_name: str
    """The registered model's name in MLflow."""
    uri: str
    digest: str
    description: str
    tags: dict[str, str]
    credentials_secret: str | None
    """The Secret, in the object's namespace, holding the registry's credentials."""
    model_version: int
    """The TrainingRun's model version being recorded."""
    ca_secret: str | None = None
    """The Secret, in the object's namespace, whose `ca.crt` is the tracking server's private CA."""
    run_id: str | None = None
    """The MLflow run of the trial that trained the model (linked from the new version)."""


@dataclass(frozen=True)
class Action:
    """One thing the controller does, in the owner's namespace.

    - `create` `body` (a `Job` or `PyTorchJob` whose name exists already is fine: names are
      deterministic; any other kind is a plain create that a concurrent creator makes fail);
    - `apply` `body` (server-side apply of the operator's own child), after the JSON patch `fields`
      when it has one (its managed fields: `ownership.upgrade`);
    - `delete` the `kind` object `name`; `suspend` / `resume` the PyTorchJob `name`;
    - `patch` the `kind` object `name` with the merge patch `body` (an HTTPRoute's weights);
    - `annotate` the `kind` object `name` with `body` (a None value removes the annotation);
    - `register` `registration` in MLflow (the outcome lands in status; see `trainingrun`);
    - `gauge`: set `modelops_rollout_aborted` of the ModelDeployment `name` to `value`.
    """

    verb: Verb
    kind: str
    name: str
    body: dict[str, Any] | None = None
    registration: Registration | None = None
    value: float | None = None
    fields: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Outcome(Generic[S]):
    """The status an object should have, the actions that get it there, and the Events to post."""

    status: S
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def creates(actions: list[Action]) -> list[dict[str, Any]]:
    """The bodies of the objects `actions` create."""
    return [a.body for a in actions if a.verb == "create" and a.body is not None]
