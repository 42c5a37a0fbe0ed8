"""Status bookkeeping shared by the three kinds: parsing, the invalid-spec status, merge patches,
and the Events that announce a changed Ready condition."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from modelops_operator.api import conditions as c
from modelops_operator.api.common import ConditionStatus, StatusBase
from modelops_operator.reconcile.actions import Event

S = TypeVar("S", bound=StatusBase)


def parse_status(model: type[S], raw: dict[str, Any] | None) -> S:
    """The stored status as a model; one that no longer validates is started afresh (and logged by
    the caller), since status is ours to rewrite."""
    try:
        return model.model_validate(raw or {})
    except ValidationError:
        return model()


def describe_error(error: ValidationError, limit: int = 5) -> str:
    """A validation error as one line a user can act on: `spec.a.b: message; ...`."""
    parts = []
    for err in error.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        parts.append(f"spec.{where}: {err['msg']}")
    more = len(error.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def invalid_spec(status: S, generation: int, message: str, *, at: datetime | None = None) -> S:
    """The status of an object whose spec cannot be acted on: not Ready, not progressing, and why."""
    return refused(status, generation, c.INVALID_SPEC, [message], "Failed", at=at)


def refused(
    status: S, generation: int, reason: str, messages: list[str], phase: str, *, at: datetime | None = None
) -> S:
    """Not Ready and not progressing for `reason`, with up to five `messages`: the operator will
    not act (an invalid spec, a child's name held by another's object, a Secret not allowed)."""
    msg = "; ".join(messages[:5]) + (f" (and {len(messages) - 5} more)" if len(messages) > 5 else "")
    conds = c.waiting(status.conditions, reason, msg, generation, at=at)
    return status.model_copy(update={"phase": phase, "observed_generation": generation, "conditions": conds})


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`; empty when they are equal, so
    status is written only when it changed."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif value != before:
            patch[key] = value
    return patch


def ready_events(old: StatusBase, new: StatusBase) -> list[Event]:
    """An Event when the Ready condition changes status or reason (not on every write)."""
    before = c.get_condition(old.conditions, c.READY)
    after = c.get_condition(new.conditions, c.READY)
    if after is None or (before is not None and (before.status, before.reason) == (after.status, after.reason)):
        return []
    normal = after.status == ConditionStatus.TRUE or after.reason in c.WAITING_REASONS
    return [Event("Normal" if normal else "Warning", after.reason, after.message)]
