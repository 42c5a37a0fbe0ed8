"""The CRDs in crds/ are generated from the pydantic models and are valid structural schemas."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops_operator import crdgen
from modelops_operator.api.kinds import KINDS, Kind

CRDS = Path(__file__).resolve().parents[2] / "crds"


def walk(node: Any, path: str = ""):
    """Every schema node with its path."""
    if isinstance(node, dict):
        yield path, node
        for name, sub in node.get("properties", {}).items():
            yield from walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from walk(node["additionalProperties"], f"{path}{{}}")


def schema(kind: Kind) -> dict[str, Any]:
    return crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crds_match_the_models():
    assert crdgen.main(["--check", "--out", str(CRDS)]) == 0, "run: python -m modelops_operator.crdgen"


def test_check_reports_a_stale_file(tmp_path):
    crdgen.main(["--out", str(tmp_path)])
    victim = tmp_path / crdgen.filename(KINDS[0])
    victim.write_text(victim.read_text().replace("minItems: 1", "minItems: 2"))
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_field_has_a_description(kind):
    missing = [
        p
        for p, node in walk(schema(kind)["properties"]["spec"], "spec")
        if not node.get("description") and not p.endswith(("[]", "{}"))
    ]
    missing += [
        p
        for p, node in walk(schema(kind)["properties"]["status"], "status")
        if not node.get("description") and not p.endswith(("[]", "{}"))
    ]
    assert missing == []


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind):
    for path, node in walk(schema(kind)):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if node.get("type") == "object" and path not in ("", ".metadata"):
            assert "properties" in node or "additionalProperties" in node, f"{path}: untyped object"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_crd_shape(kind):
    crd = crdgen.crd(kind)
    names, version = crd["spec"]["names"], crd["spec"]["versions"][0]
    assert names["categories"] == ["modelops"]
    # short names must not shadow built-in ones (ds is DaemonSet, deploy is Deployment, ...)
    assert not set(names["shortNames"]) & {"ds", "deploy", "po", "svc", "cm", "rs", "sts", "job", "pv", "pvc", "md"}
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[0] == "Ready" and columns[-1] == "Age" and len(columns) >= 4
    conditions = schema(kind)["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "observedGeneration" in conditions["items"]["properties"]
    assert "observedGeneration" in schema(kind)["properties"]["status"]["properties"]


def test_cross_field_rules_are_cel():
    rules = {
        rule["message"]
        for kind in KINDS
        for _, node in walk(schema(kind))
        for rule in node.get("x-kubernetes-validations", [])
    }
    assert "split ratios train + val + test must sum to 1" in rules
    assert "canary weights (setWeight) must rise from step to step" in rules
    assert "minReplicas must not exceed maxReplicas" in rules
    assert len(rules) >= 15


def test_every_storage_uri_has_the_scheme_rule():
    """Each URI field of the CRDs carries the CEL rule on schemes, and the rule's regular expression
    (CEL's `matches` is RE2; this one is also valid for Python's `re`) refuses gs:// and Azure."""
    uris = [
        (kind.kind, path, node)
        for kind in KINDS
        for path, node in walk(schema(kind))
        if path.startswith(".spec") and path.rsplit(".", 1)[-1] in ("uri", "weightsUri")
    ]
    assert len(uris) == 6, [u[1] for u in uris]
    for kind, path, node in uris:
        [rule] = node["x-kubernetes-validations"]
        assert "gs://, gcs://, az:// and abfs:// are not supported" in rule["message"], (kind, path)
        regex = re.fullmatch(r"self\.matches\('(.+)'\)", rule["rule"]).group(1)
        assert [bool(re.match(regex, u)) for u in ("s3://b/k", "file:///d", "https://h/x", "http://h/x")] == [True] * 4
        assert [bool(re.match(regex, u)) for u in ("gs://b/k", "gcs://b/k", "az://c/k", "abfs://c/k")] == [False] * 4


def test_defaults_carry_no_nulls():
    for kind in KINDS:
        text = crdgen.render(kind)
        for _, node in walk(yaml.safe_load(text.split("\n", 1)[1])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
            assert "null" not in repr(node.get("default", "")).lower() and None not in _values(node.get("default"))


def _values(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in ([v] if not isinstance(v, dict | list) else _values(v))]
    if isinstance(value, list):
        return [x for v in value for x in ([v] if not isinstance(v, dict | list) else _values(v))]
    return []


def test_exclusive_bounds_are_openapi_v3():
    lr = schema(KINDS[1])["properties"]["spec"]["properties"]["hyperparameters"]["properties"]["learningRate"]
    assert lr["minimum"] == 0 and lr["exclusiveMinimum"] is True


def test_quantities_are_int_or_string():
    res = schema(KINDS[0])["properties"]["spec"]["properties"]["resources"]["properties"]["requests"]
    assert res["additionalProperties"] == {"x-kubernetes-int-or-string": True}
