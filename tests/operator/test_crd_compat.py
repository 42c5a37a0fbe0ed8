"""CRD upgrades that would break stored objects are refused (modelops_operator.crdcompat).

The committed CRDs are compared with the last release's (crds/baseline/): a field removed or
retyped, an enum value dropped, a newly required field without a default or a version no longer
served fails this test, and with it CI. Additive changes pass.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops_operator import crdcompat, crdgen
from modelops_operator.api.kinds import KINDS

REPO = Path(__file__).resolve().parents[2]
DATASET = next(k for k in KINDS if k.kind == "Dataset")
NAME = "datasets.modelops.dev v1alpha1"


def spec_of(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def remove_split(crd: dict[str, Any]) -> None:
    del spec_of(crd)["properties"]["split"]


def retype_image_size(crd: dict[str, Any]) -> None:
    spec_of(crd)["properties"]["preprocessing"]["properties"]["imageSize"]["type"] = "string"


def drop_resize_mode(crd: dict[str, Any]) -> None:
    spec_of(crd)["properties"]["preprocessing"]["properties"]["resizeMode"]["enum"].remove("pad")


def require_credentials(crd: dict[str, Any]) -> None:
    spec_of(crd)["properties"]["sources"]["items"]["required"].append("credentialsSecret")


def remove_source_items(crd: dict[str, Any]) -> None:
    del spec_of(crd)["properties"]["sources"]["items"]


def stop_serving(crd: dict[str, Any]) -> None:
    crd["spec"]["versions"][0]["served"] = False


def rename_plural(crd: dict[str, Any]) -> None:
    crd["spec"]["names"]["plural"] = "datasetz"


BREAKING: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "field-removed": (remove_split, f"{NAME}: .spec.split: removed"),
    "type-changed": (retype_image_size, f"{NAME}: .spec.preprocessing.imageSize: type changed from integer to string"),
    "enum-value-removed": (drop_resize_mode, f"{NAME}: .spec.preprocessing.resizeMode: enum values removed: ['pad']"),
    "newly-required": (
        require_credentials,
        f"{NAME}: .spec.sources[].credentialsSecret: newly required, without a default",
    ),
    "list-items-removed": (remove_source_items, f"{NAME}: .spec.sources[]: removed"),
    "version-unserved": (stop_serving, "datasets.modelops.dev: version v1alpha1 is no longer served"),
    "renamed": (rename_plural, "datasets.modelops.dev: names.plural changed from 'datasets' to 'datasetz'"),
}


@pytest.mark.parametrize("case", BREAKING, ids=list(BREAKING))
def test_a_breaking_change_is_named(case):
    change, message = BREAKING[case]
    old = crdgen.crd(DATASET)
    new = copy.deepcopy(old)
    change(new)
    assert crdcompat.breaking_changes(old, new) == [message]


def add_field(crd: dict[str, Any]) -> None:
    spec_of(crd)["properties"]["notes"] = {"description": "Free text.", "type": "string"}


def add_enum_value(crd: dict[str, Any]) -> None:
    spec_of(crd)["properties"]["preprocessing"]["properties"]["resizeMode"]["enum"].append("fit")


def tighten_a_bound(crd: dict[str, Any]) -> None:
    spec_of(crd)["properties"]["preprocessing"]["properties"]["imageSize"]["maximum"] = 1024


def require_with_default(crd: dict[str, Any]) -> None:
    spec_of(crd)["required"].append("preprocessing")


def add_a_version(crd: dict[str, Any]) -> None:
    crd["spec"]["versions"].append({**copy.deepcopy(crd["spec"]["versions"][0]), "name": "v1beta1", "storage": False})


ADDITIVE = {
    "new-optional-field": add_field,
    "new-enum-value": add_enum_value,
    "tighter-bound": tighten_a_bound,
    "required-with-default": require_with_default,
    "new-version": add_a_version,
}


@pytest.mark.parametrize("case", ADDITIVE, ids=list(ADDITIVE))
def test_an_additive_change_passes(case):
    old = crdgen.crd(DATASET)
    new = copy.deepcopy(old)
    ADDITIVE[case](new)
    assert new != old
    assert crdcompat.breaking_changes(old, new) == []


def test_the_committed_crds_keep_every_released_field():
    """The check CI runs: crds/ against the last release's CRDs."""
    baseline = crdcompat.load(crdcompat.baseline_dir())
    assert set(baseline) == {f"{k.plural}.modelops.dev" for k in KINDS}
    assert crdcompat.check(REPO / "crds", crdcompat.baseline_dir()) == []
    assert crdcompat.main([]) == 0


def test_the_command_refuses_a_dropped_field_and_a_dropped_crd(tmp_path, capsys):
    current, baseline = tmp_path / "crds", tmp_path / "baseline"
    crdgen.main(["--out", str(current)])
    assert crdcompat.main(["--crds", str(current), "--baseline", str(baseline), "--accept"]) == 0
    assert crdcompat.main(["--crds", str(current), "--baseline", str(baseline)]) == 0

    path = current / crdgen.filename(DATASET)
    crd = yaml.safe_load(path.read_text())
    remove_split(crd)
    path.write_text(yaml.safe_dump(crd))
    (current / crdgen.filename(KINDS[-1])).unlink()
    assert crdcompat.main(["--crds", str(current), "--baseline", str(baseline)]) == 1
    err = capsys.readouterr().err
    assert f"{NAME}: .spec.split: removed" in err
    assert f"{KINDS[-1].plural}.modelops.dev: the CRD is gone" in err
    assert "serve a new version instead" in err


def test_an_empty_baseline_is_an_error_not_a_pass(tmp_path, capsys):
    assert crdcompat.main(["--baseline", str(tmp_path)]) == 1
    assert f"no CRDs in {tmp_path}" in capsys.readouterr().err
