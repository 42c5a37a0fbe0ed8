"""Whose object is it: the check before the operator writes a child, or a user's HTTPRoute.

Names of children are predictable (`<name>`, `<name>-stable`, …), and the namespace is shared with
other teams and tools. An object of that name that this operator did not create for this very
owner is someone else's: writing it would rewrite its selector and pods and, through the
controller owner reference, have it garbage-collected with our object. So:

- absent: **create** it (a server-side apply that does not force, so it fails if someone created
  it first with any field of another value; see `kube.create`);
- controlled by the owner (its controller owner reference carries the owner's uid): **apply** it,
  taking over the fields a person changed by hand (the operator's own object), or **keep** it when
  it already holds what would be applied: the hash of the desired body (annotation
  `modelops.dev/applied`) is the one last applied, so no field was dropped from it, and every field
  of it still has its value in the object, so nobody changed one. Nothing is sent then: a
  server-side apply that changes nothing still costs the API server a request and its
  field-management work, and 500 ModelDeployments with seven children each, resynced every minute,
  sent 3,500 a minute (bench/results/scale.json);
- anything else: a **conflict**: nothing is written, and the owner's status names the object.

A child that an earlier version created with a plain create (POST) holds those fields in the
operator's `Update` entry of `metadata.managedFields`, which no apply owns: a field later dropped
from the desired body would never leave the object. Before applying to such a child, its entry is
folded into the operator's `Apply` entry (`upgrade`, as client-go's `csaupgrade` does).

An HTTPRoute is never ours (the user names one to have its weights set): its owner hands it over
with the annotation `modelops.dev/modeldeployment: <name>` (`ROUTE_ANNOTATION`), and the operator
then writes only its own rules in it (`routing` says which).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from modelops_operator.api.common import FIELD_MANAGER
from modelops_operator.api.names import APPLIED_ANNOTATION
from modelops_operator.builders.common import spec_hash

ROUTE_ANNOTATION = "modelops.dev/modeldeployment"


@dataclass(frozen=True)
class Claim:
    """What to do with one child: create, apply, keep (it holds the body already), or nothing
    (conflict, with why). `body` is the desired body stamped with its hash (`stamped`)."""

    verb: Literal["create", "apply", "keep", "conflict"]
    body: dict[str, Any]
    message: str = ""
    upgrade: list[dict[str, Any]] | None = None
    """Before an apply: the JSON patch that folds the operator's `Update` entry into its `Apply`
    entry (`upgrade`), when the child has one."""


def controller_uid(obj: dict[str, Any]) -> str | None:
    """The uid of `obj`'s controller owner reference, if it has one."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind', 'object')} {meta.get('namespace', '')}/{meta.get('name', '')}".replace(" /", " ")


def stamped(desired: dict[str, Any]) -> dict[str, Any]:
    """`desired` with the hash of its body (without this annotation) in `APPLIED_ANNOTATION`."""
    meta = dict(desired.get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != APPLIED_ANNOTATION}
    meta["annotations"] = annotations
    digest = spec_hash({**desired, "metadata": meta})
    return {**desired, "metadata": {**meta, "annotations": {**annotations, APPLIED_ANNOTATION: digest}}}


def holds(want: Any, have: Any) -> bool:
    """Whether every field of `want` has the same value in `have`, which may hold more (fields the
    API server defaults, or others write). Lists match item by item, in order and of equal length;
    a null in `want` (no value) matches an absent field. A value the API server rewrites in its
    own canonical form (a quantity `0.5` read back as `500m`) does not match: it is applied again,
    which is what happened before this check, never wrong."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return False
        return all(have.get(k) is None if v is None else k in have and holds(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(map(holds, want, have))
    return type(want) is type(have) and bool(want == have)


def claim(desired: dict[str, Any], observed: dict[str, Any] | None) -> Claim:
    """The verb for `desired` (which carries its owner's controller reference) given the object of
    the same kind and name that exists now, if any."""
    body = stamped(desired)
    if observed is None:
        return Claim("create", body)
    owner = controller_uid(desired)
    if owner is not None and controller_uid(observed) == owner:
        if holds(body, observed):
            return Claim("keep", body)
        return Claim("apply", body, upgrade=upgrade(observed))
    holder = controller_uid(observed)
    whose = f"controlled by another object (uid {holder})" if holder else "not created by the operator"
    return Claim(
        "conflict",
        body,
        f"{describe(observed)} already exists and is {whose}: rename this object, or delete that one",
    )


def _union(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two `FieldsV1` sets as one (nested objects whose leaves are `{}`)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = _union(out[key], value) if key in out and isinstance(out[key], dict) else value
    return out


def upgrade(observed: dict[str, Any], manager: str = FIELD_MANAGER) -> list[dict[str, Any]] | None:
    """A JSON patch that moves the fields of `manager`'s `Update` entries (a plain create or update
    of the object's main resource, same API version) into its `Apply` entry, so that the next
    apply owns them and removes those it no longer sets; None when there are none. It tests the
    object's resourceVersion first: a changed object refuses it, and the next reconcile tries again."""
    meta = observed.get("metadata") or {}
    entries = list(meta.get("managedFields") or [])

    def ours(entry: dict[str, Any], operation: str) -> bool:
        return entry.get("manager") == manager and entry.get("operation") == operation and not entry.get("subresource")

    applied = next((e for e in entries if ours(e, "Apply")), None)
    version = (applied or {}).get("apiVersion") or observed.get("apiVersion")
    updates = [e for e in entries if ours(e, "Update") and e.get("apiVersion") == version]
    if not updates or not meta.get("resourceVersion"):
        return None
    fields: dict[str, Any] = dict((applied or {}).get("fieldsV1") or {})
    for entry in updates:
        fields = _union(fields, entry.get("fieldsV1") or {})
    merged = {**(applied or updates[0]), "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": fields}
    kept = [e for e in entries if e is not applied and not any(e is u for u in updates)]
    return [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
        {"op": "replace", "path": "/metadata/managedFields", "value": [*kept, merged]},
    ]


def owns(observed: dict[str, Any], path: Sequence[str], manager: str = FIELD_MANAGER) -> bool:
    """Whether `manager` owns the field at `path` (such as `("spec", "replicas")`) of `observed`'s
    main resource: in its `Apply` entry, or in an `Update` entry that `upgrade` would fold into it.
    Another manager's write of another value (an autoscaler through the scale subresource, a
    `kubectl scale`) takes the field out of these entries."""
    for entry in (observed.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("subresource"):
            continue
        if entry.get("operation") not in ("Apply", "Update"):
            continue
        fields: Any = entry.get("fieldsV1") or {}
        for key in path:
            fields = fields.get(f"f:{key}") if isinstance(fields, dict) else None
        if fields is not None:
            return True
    return False


def conflicts(claims: list[Claim]) -> list[str]:
    """The messages of the claims that may not go ahead."""
    return [c.message for c in claims if c.verb == "conflict"]


def route_delegated(route: dict[str, Any] | None, namespace: str, route_name: str, owner: str) -> str | None:
    """None when the HTTPRoute hands its rules to the ModelDeployment `owner`; else why not."""
    if route is None:
        return f"HTTPRoute {namespace}/{route_name} does not exist; create it, annotated {ROUTE_ANNOTATION}: {owner}"
    annotations = (route.get("metadata") or {}).get("annotations") or {}
    if annotations.get(ROUTE_ANNOTATION) != owner:
        return (
            f"HTTPRoute {namespace}/{route_name} is not handed to this ModelDeployment: its owner must annotate "
            f"it {ROUTE_ANNOTATION}: {owner} (the operator then writes its own rules in it); it was left untouched"
        )
    return None
