"""The Argo CD side of charts/argocd: the generated health checks and argocd-cm snippet, and the
Applications in examples/argocd.

What the health checks answer is tested in test_health.py, by Argo CD's own code (util/lua, in its
gopher-lua sandbox) on statuses the operator's reconcile code produced.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.tools import import_or_missing

ARGOCD = Path(__file__).resolve().parents[2] / "charts" / "argocd"
KINDS = ("Dataset", "TrainingRun", "ModelDeployment")


def script(kind: str) -> str:
    return (ARGOCD / "health" / f"modelops.dev_{kind}.lua").read_text()


# --- the generated argocd-cm snippet and argo-cd values ----------------------------------------


def _generator(argocd: Path = ARGOCD):
    spec = importlib.util.spec_from_file_location("argocd_generate", argocd / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("file", "path"),
    [("argocd-cm-snippet.yaml", ("data",)), ("argo-cd-values.yaml", ("configs", "cm"))],
)
def test_generated_yaml_embeds_exactly_the_lua_files(file, path):
    doc = yaml.safe_load((ARGOCD / file).read_text())
    for key in path:
        doc = doc[key]
    assert doc == {f"resource.customizations.health.modelops.dev_{kind}": script(kind) for kind in KINDS}


def test_generated_lua_and_yaml_are_up_to_date():
    assert _generator().main(["--check"]) == 0, "run python3 charts/argocd/generate.py"


def test_check_fails_on_a_stale_or_edited_script(tmp_path, capsys):
    """`generate.py --check` covers the generated Lua too: an edit there, or in a body, is caught."""
    copy = tmp_path / "charts" / "argocd"
    shutil.copytree(ARGOCD, copy)
    generate = _generator(copy)
    assert generate.main(["--check"]) == 0
    target = copy / "health" / "modelops.dev_Dataset.lua"
    target.write_text(target.read_text().replace('"Healthy"', '"Degraded"'))
    assert generate.main(["--check"]) == 1
    assert "charts/argocd/health/modelops.dev_Dataset.lua is out of date" in capsys.readouterr().out
    assert generate.main([]) == 0 and generate.main(["--check"]) == 0
    assert target.read_text() == script("Dataset")
    capsys.readouterr()
    body = copy / "health" / "TrainingRun.body.lua"
    body.write_text(body.read_text().replace("training failed", "the training failed"))
    assert generate.main(["--check"]) == 1
    assert {line.split()[0] for line in capsys.readouterr().out.splitlines()} == {
        "charts/argocd/health/modelops.dev_TrainingRun.lua",
        "charts/argocd/argocd-cm-snippet.yaml",
        "charts/argocd/argo-cd-values.yaml",
    }


def test_snippet_is_the_argocd_cm_configmap():
    doc = yaml.safe_load((ARGOCD / "argocd-cm-snippet.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"], doc["metadata"]["name"]) == ("v1", "ConfigMap", "argocd-cm")


# --- the Argo CD Applications in examples/argocd ------------------------------------------------

REPO = ARGOCD.parents[1]


def applications() -> dict[str, dict[str, Any]]:
    apps = {}
    for path in sorted((REPO / "examples" / "argocd").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] == "argoproj.io/v1alpha1" and doc["kind"] == "Application", path
            apps[doc["metadata"]["name"]] = doc
    return apps


def test_applications_point_at_this_repository():
    apps = applications()
    assert set(apps) == {"modelops-operator", "modelops-quickstart-artifacts", "modelops-quickstart"}
    for app in apps.values():
        source = app["spec"]["source"]
        assert source["repoURL"] == "https://github.com/modelops/modelops.git" and source["targetRevision"] == "main"
        assert (REPO / source["path"]).is_dir(), source["path"]
        assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
        assert {"CreateNamespace=true", "ServerSideApply=true"} <= set(app["spec"]["syncPolicy"]["syncOptions"])


def test_quickstart_applications_split_the_directory():
    """The artifacts Application takes 00-artifacts.yaml, the other every other file."""
    apps = applications()
    files = {p.name for p in (REPO / "examples" / "quickstart").glob("*.yaml")}
    first = apps["modelops-quickstart-artifacts"]["spec"]["source"]["directory"]["include"]
    rest = apps["modelops-quickstart"]["spec"]["source"]["directory"]["exclude"]
    assert first == rest == "00-artifacts.yaml" and first in files and len(files) > 1


def test_operator_values_fit_the_chart():
    schema_path = REPO / "charts" / "modelops" / "values.schema.json"
    assert schema_path.exists(), "charts/modelops/values.schema.json is gone"
    jsonschema = import_or_missing("jsonschema", "jsonschema (requirements-dev.txt) checks the values")
    values = applications()["modelops-operator"]["spec"]["source"]["helm"]["valuesObject"]
    jsonschema.validate(values, yaml.safe_load(schema_path.read_text()))
    assert values["rbac"]["scope"] == "cluster" and values["watchNamespaces"] == []
