"""A/B experiments: the ``--experiment`` setting, sticky assignment, request ids and feedback.

An experiment serves two to four *variants* of one model name side by side (the first is the
control). Each request goes to one variant, chosen by a key the client sends (a header, or gRPC
metadata): the same key goes to the same variant on every replica, because the choice is a pure
function of the experiment's name, the key and the weights (``assign``)::

    bucket  = int(sha256(f"{name}\\0{key}").hexdigest()[:8], 16) % 100
    variant = the first whose cumulative weight exceeds bucket

A request without a key is assigned by a random key. Each answer carries its variant and a request
id ``<variant>.<32 hex>``; a client reports the outcome of a prediction by that id
(``POST /v1/feedback``), which becomes ``modelops_experiment_outcomes_total``. The id names its
variant, so no state is shared between replicas: ids are neither authenticated nor deduplicated.

This module is pure (no I/O): the data plane loads the variants and checks that their model cards
agree (``card_difference``), the endpoints pick a variant per request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from modelops_server.modelcard import ModelCard

VARIANT_NAME = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$"
#: An HTTP header name that is also a valid gRPC metadata key once lower-cased (not ``-bin``).
KEY_HEADER = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
REQUEST_ID = re.compile(r"^(?P<variant>[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?)\.[0-9a-f]{32}$")
VARIANT_HEADER = "x-modelops-variant"
REQUEST_ID_HEADER = "x-modelops-request-id"
FEEDBACK_HELP = 'send {"requestId": "<variant>.<32 hex>", "outcome": "success" | "failure"}'


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Variant(_Strict):
    """One model version in an experiment, with its share of the keys."""

    name: str = Field(pattern=VARIANT_NAME, description="The variant's name (the control is the first variant).")
    uri: str = Field(min_length=1, description="The ONNX model, as --model-uri takes it.")
    digest: str | None = Field(
        default=None, pattern=r"^sha256:[0-9a-f]{64}$", description="sha256:<64 hex> the ONNX file must have."
    )
    version: str = Field(min_length=1, max_length=128, description="The version label its answers and metrics carry.")
    weight: int = Field(gt=0, le=100, description="Percent of the keys assigned to this variant.")


class Experiment(_Strict):
    """The ``--experiment`` setting (``MODELOPS_EXPERIMENT``), a JSON object."""

    name: str = Field(min_length=1, max_length=253, description="The experiment's name: part of the hash.")
    key_header: str = Field(alias="keyHeader", pattern=KEY_HEADER, description="The header holding the key.")
    variants: list[Variant] = Field(min_length=2, max_length=4)

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("the experiment's name must be printable text")
        return value

    @field_validator("key_header")
    @classmethod
    def _not_binary(cls, value: str) -> str:
        if value.lower().endswith("-bin"):
            raise ValueError("keyHeader must not end in -bin (gRPC reserves it for binary metadata)")
        return value

    @model_validator(mode="after")
    def _variants_agree(self) -> Experiment:
        names, versions = [v.name for v in self.variants], [v.version for v in self.variants]
        for what, values in (("names", names), ("versions", versions)):
            repeated = sorted({x for x in values if values.count(x) > 1})
            if repeated:
                raise ValueError(f"the variants' {what} must be unique; repeated: {', '.join(repeated)}")
        total = sum(v.weight for v in self.variants)
        if total != 100:
            raise ValueError(f"the variants' weights must sum to 100, not {total}")
        return self

    @property
    def control(self) -> Variant:
        """The first variant."""
        return self.variants[0]

    @property
    def metadata_key(self) -> str:
        """``key_header`` as a gRPC metadata key (lower case)."""
        return self.key_header.lower()

    def variant(self, name: str) -> Variant | None:
        """The variant called `name`, if any."""
        return next((v for v in self.variants if v.name == name), None)


def parse_experiment(value: object) -> object:
    """The setting's raw value (a JSON string, empty for none) as what :class:`Experiment` validates."""
    if value is None or isinstance(value, Experiment | dict):
        return value
    if not isinstance(value, str | bytes):
        raise ValueError("the experiment is a JSON object")
    if not value.strip():
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the experiment is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError('the experiment is a JSON object: {"name": …, "keyHeader": …, "variants": [...]}')
    return doc


def bucket(experiment: str, key: str) -> int:
    """The key's bucket in 0..99 (the contract's hash rule)."""
    digest = hashlib.sha256(f"{experiment}\0{key}".encode("utf-8", "surrogateescape")).hexdigest()
    return int(digest[:8], 16) % 100


def assign(experiment: Experiment, key: str) -> Variant:
    """The variant of `key`: the first whose cumulative weight exceeds the key's bucket."""
    b = bucket(experiment.name, key)
    cumulative = 0
    for variant in experiment.variants:
        cumulative += variant.weight
        if cumulative > b:
            return variant
    raise AssertionError("weights sum to 100")  # pragma: no cover - the model validator ensures it


@dataclass(frozen=True)
class Assignment:
    """A request's variant and its id; ``keyed`` is False when the request carried no key."""

    variant: Variant
    request_id: str
    keyed: bool

    @property
    def headers(self) -> dict[str, str]:
        """The response headers (gRPC: initial metadata) that name the variant and the request."""
        return {VARIANT_HEADER: self.variant.name, REQUEST_ID_HEADER: self.request_id}


def choose(experiment: Experiment, key: str | None) -> Assignment:
    """Assign a request by its key, or by a random key when it has none (or an empty one)."""
    keyed = bool(key)
    variant = assign(experiment, key if key else secrets.token_hex(16))
    return new_assignment(variant, keyed)


def new_assignment(variant: Variant, keyed: bool) -> Assignment:
    """An assignment to `variant` with a fresh request id."""
    return Assignment(variant, f"{variant.name}.{secrets.token_hex(16)}", keyed)


class Feedback(_Strict):
    """``POST /v1/feedback``: the outcome of the prediction answered under ``requestId``."""

    request_id: str = Field(alias="requestId", max_length=128)
    outcome: Literal["success", "failure"]

    @field_validator("request_id")
    @classmethod
    def _id_form(cls, value: str) -> str:
        if not REQUEST_ID.match(value):
            raise ValueError("requestId must be <variant>.<32 lowercase hex>, as x-modelops-request-id carries it")
        return value

    @property
    def variant(self) -> str:
        """The variant the id names."""
        return self.request_id.rsplit(".", 1)[0]


def parse_feedback(body: bytes) -> Feedback:
    """The feedback report in `body`; ``ValueError`` with the problem and the expected form."""
    try:
        return Feedback.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(body)'}: {e['msg']}" for e in exc.errors(include_input=False)[:3]
        )
        raise ValueError(f"{problems}: {FEEDBACK_HELP}") from exc


def _card_facts(card: ModelCard) -> dict[str, object]:
    """What every variant must share: the classes and the input and output contract."""
    i = card.input
    return {
        "classes": card.classes,
        "input.name": i.name,
        "input.imageSize": i.image_size,
        "input.colorMode": i.color_mode,
        "input.resizeMode": i.resize_mode,
        "input.mean": i.mean,
        "input.std": i.std,
        "output.name": card.output.name,
    }


def card_difference(first: tuple[str, ModelCard], other: tuple[str, ModelCard]) -> str | None:
    """None when two variants' cards agree on classes, input and output; else what differs, naming both."""
    (a, card_a), (b, card_b) = first, other
    facts_a, facts_b = _card_facts(card_a), _card_facts(card_b)
    differ = [k for k in facts_a if facts_a[k] != facts_b[k]]
    if not differ:
        return None
    details = "; ".join(f"{k}: {_short(facts_a[k])} vs {_short(facts_b[k])}" for k in differ)
    return (
        f"experiment variants {a!r} and {b!r} disagree on their model cards ({details}); every variant must take "
        "the same input and answer with the same classes"
    )


def _short(value: object) -> str:
    text = orjson.dumps(value).decode() if isinstance(value, list) else repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
