"""The pydantic base of the JSON documents this image reads: the training config, the preparation
config and the dataset manifest (with its augmentation policy).

camelCase on the wire, unknown fields refused (a typo must not be ignored silently, and a v1 reader
must not skip what it does not know), and JSON `true`/`false` refused where a number is expected.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError


def _kinds(annotation: Any) -> set[Any]:
    """The types a value may have at the top of an annotation: `int | None` → {int, NoneType},
    `Annotated[float, …]` → {float}; anything else is itself."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return set().union(*(_kinds(arg) for arg in get_args(annotation)))
    return {annotation}


def _number(kinds: set[Any]) -> Literal["integer", "number"] | None:
    """What `kinds` expects when it takes a number and not a boolean: pydantic reads `true` as 1
    for an int or float field (`"epochs": true` would train one epoch)."""
    if bool in kinds or not kinds & {int, float}:
        return None
    return "integer" if int in kinds else "number"


class WireModel(BaseModel):
    """camelCase on the wire, unknown fields refused, and JSON `true`/`false` refused where a
    number is expected (an int or float field, or the items of a list of them); numeric strings,
    as a trial's parameters carry, still parse."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_attribute_docstrings=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is None:
            return value
        kinds = _kinds(cls.model_fields[info.field_name].annotation)
        if isinstance(value, bool) and (kind := _number(kinds)):
            raise PydanticCustomError("bool_as_number", "Input should be a valid {kind}, not a boolean", {"kind": kind})
        if isinstance(value, list):
            items = next((get_args(k)[0] for k in kinds if get_origin(k) is list and get_args(k)), None)
            bad = next((i for i, item in enumerate(value) if isinstance(item, bool)), None)
            if bad is not None and items is not None and (kind := _number(_kinds(items))):
                message = "item {index}: Input should be a valid {kind}, not a boolean"
                raise PydanticCustomError("bool_as_number", message, {"index": bad, "kind": kind})
        return value
