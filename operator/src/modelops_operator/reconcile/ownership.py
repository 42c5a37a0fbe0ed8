"""Whose object is it: the check before the operator writes a child, or a user's HTTPRoute.

Names of children are predictable (`<name>`, `<name>-stable`, …), and the namespace is shared with
other teams and tools. An object of that name that this operator did not create for this very
owner is someone else's: writing it would rewrite its selector and pods and, through the
controller owner reference, have it garbage-collected with our object. So:

- absent: **create** it (a plain create, which fails if someone creates it first);
- controlled by the owner (its controller owner reference carries the owner's uid): **apply** it,
  taking over the fields a person changed by hand (the operator's own object);
- anything else: a **conflict**: nothing is written, and the owner's status names the object.

An HTTPRoute is never ours (the user names one to have its weights set): its owner hands it over
with the annotation `modelops.dev/modeldeployment: <name>` (`ROUTE_ANNOTATION`), and the operator
then writes only its own rules in it (`routing` says which).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ROUTE_ANNOTATION = "modelops.dev/modeldeployment"


@dataclass(frozen=True)
class Claim:
    """What to do with one child: create, apply, or nothing (conflict, with why)."""

    verb: Literal["create", "apply", "conflict"]
    body: dict[str, Any]
    message: str = ""


def controller_uid(obj: dict[str, Any]) -> str | None:
    """The uid of `obj`'s controller owner reference, if it has one."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind', 'object')} {meta.get('namespace', '')}/{meta.get('name', '')}".replace(" /", " ")


def claim(desired: dict[str, Any], observed: dict[str, Any] | None) -> Claim:
    """The verb for `desired` (which carries its owner's controller reference) given the object of
    the same kind and name that exists now, if any."""
    if observed is None:
        return Claim("create", desired)
    owner = controller_uid(desired)
    if owner is not None and controller_uid(observed) == owner:
        return Claim("apply", desired)
    holder = controller_uid(observed)
    whose = f"controlled by another object (uid {holder})" if holder else "not created by the operator"
    return Claim(
        "conflict",
        desired,
        f"{describe(observed)} already exists and is {whose}: rename this object, or delete that one",
    )


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
