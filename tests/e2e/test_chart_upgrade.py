"""`helm upgrade` from the previous chart upgrades the CRDs, keeps every object, and keeps them on
uninstall.

The previous chart comes from git history: by default the last one that shipped its CRDs in Helm's
`crds/` directory (which `helm upgrade` never touched), or MODELOPS_PREVIOUS_CHART (a commit or
tag). The next chart is this tree's, with one field added to the Dataset CRD, as the next version
of an additive change would: before the upgrade the API server refuses the field, after it the
field is stored, and the objects created under the previous chart are the same objects (uid) with
the same spec, and the new chart's aggregated roles give Kubernetes' `edit` and `view` their
access. The upgrade follows docs/upgrade.md: `--reset-then-reuse-values` (the user's values
kept, the new chart's defaults in) and, once, `--take-ownership` (the CRDs were not the release's).

The operator is not run here (`replicas: 0`): test_chart_install.py runs it from the chart.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops_operator import __version__, crdgen
from modelops_operator.api.common import GROUP, VERSION
from modelops_operator.api.kinds import KINDS
from modelops_operator.api.names import BUNDLE_VERSION_LABEL
from tests.support.cluster import REPO, create, helm, kubectl, wait_until
from tests.support.objects import dataset, model_deployment, training_run

CHART = REPO / "charts" / "modelops"
CRD_NAMES = [f"{k.plural}.modelops.dev" for k in KINDS]
NEW_FIELD = "upgradeNote"


def get(custom: Any, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name))


def previous_commit() -> str:
    """MODELOPS_PREVIOUS_CHART, or the parent of the commit that moved the CRDs out of `crds/`."""
    if ref := os.environ.get("MODELOPS_PREVIOUS_CHART"):
        return ref
    git = [
        "git",
        "-C",
        str(REPO),
        "log",
        "-1",
        "--format=%H",
        "--no-renames",
        "--diff-filter=D",
        "--",
        "charts/modelops/crds",
    ]
    removed = subprocess.run(git, capture_output=True, text=True, check=True).stdout.strip()
    if not removed:
        pytest.fail(
            "no commit removed charts/modelops/crds/ in this clone's history (shallow?); set MODELOPS_PREVIOUS_CHART"
        )
    return f"{removed}^"


def extract_chart(ref: str, into: Path) -> Path:
    """charts/modelops as it was at `ref`, written to `into`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "charts/modelops"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "charts" / "modelops"


def next_chart(into: Path) -> Path:
    """This tree's chart, its Dataset CRD with one more optional field."""
    chart = into / "modelops"
    shutil.copytree(CHART, chart)
    kind = next(k for k in KINDS if k.kind == "Dataset")
    body = copy.deepcopy(crdgen.crd(kind))
    spec = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"][NEW_FIELD] = {"description": "A field the next version adds.", "type": "string"}
    (chart / "templates" / "crds" / crdgen.filename(kind)).write_text(crdgen.chart_template(body))
    return chart


def with_new_field(name: str) -> str:
    obj = dataset(name).obj()
    obj["spec"][NEW_FIELD] = "added by the next version"
    return yaml.safe_dump(obj)


def crd(name: str) -> dict[str, Any]:
    return dict(json.loads(kubectl("get", "crd", name, "-o", "json").stdout))


def test_helm_upgrade_from_the_previous_chart_upgrades_the_crds_and_keeps_every_object(
    crds, custom, namespace, tmp_path
):
    previous = extract_chart(previous_commit(), tmp_path / "previous")
    assert (previous / "crds").is_dir() or os.environ.get("MODELOPS_PREVIOUS_CHART")
    upcoming = next_chart(tmp_path / "next")
    release, ns = f"up-{uuid.uuid4().hex[:6]}", f"up-system-{uuid.uuid4().hex[:6]}"
    common = [
        "--namespace", ns, "--set", "replicas=0",
        "--set", "rbac.scope=namespaced", "--set-json", f"watchNamespaces={json.dumps([namespace])}",
    ]  # fmt: skip
    try:
        kubectl("create", "namespace", ns)
        # The previous chart; its crds/ are skipped, as on any cluster where they already exist.
        installed = helm("install", release, str(previous), *common, "--set", "settings.logLevel=DEBUG", check=False)
        assert installed.returncode == 0, installed.stderr
        for builder in (dataset("digits"), training_run("digits-resnet", "digits"), model_deployment("digits")):
            create(custom, namespace, builder)
        plurals = {"datasets": "digits", "trainingruns": "digits-resnet", "modeldeployments": "digits"}
        before = {plural: get(custom, namespace, plural, name) for plural, name in plurals.items()}
        refused = kubectl(
            "create", "--validate=strict", "-n", namespace, "-f", "-", stdin=with_new_field("early"), check=False
        )
        assert refused.returncode != 0 and f'unknown field "spec.{NEW_FIELD}"' in refused.stderr, refused.stderr

        upgraded = helm(
            "upgrade", release, str(upcoming), *common, "--reset-then-reuse-values", "--take-ownership", check=False
        )
        assert upgraded.returncode == 0, upgraded.stderr
        for name in CRD_NAMES:
            meta = crd(name)["metadata"]
            assert meta["labels"][BUNDLE_VERSION_LABEL] == __version__, meta
            assert meta["annotations"]["helm.sh/resource-policy"] == "keep", meta
            assert meta["annotations"]["meta.helm.sh/release-name"] == release, meta
        kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in CRD_NAMES))

        # The new field is accepted (once the API server serves the new schema: it reloads a
        # changed CRD shortly after the update) and stored.
        wait_until(
            "the upgraded schema accepting the new field",
            lambda: (
                kubectl(
                    "create",
                    "--validate=strict",
                    "-n",
                    namespace,
                    "-f",
                    "-",
                    stdin=with_new_field("later"),
                    check=False,
                ).returncode
                == 0
            ),
            timeout=30,
        )
        assert get(custom, namespace, "datasets", "later")["spec"][NEW_FIELD] == "added by the next version"
        # The objects of the previous version are intact: the same objects, the same spec.
        for plural, name in plurals.items():
            now = get(custom, namespace, plural, name)
            assert now["metadata"]["uid"] == before[plural]["metadata"]["uid"], plural
            assert now["spec"] == before[plural]["spec"], plural
        # The user's values survive, and the new chart's defaults are in.
        values = json.loads(helm("get", "values", release, "-n", ns, "-o", "json").stdout)
        assert values["settings"]["logLevel"] == "DEBUG"
        merged = json.loads(helm("get", "values", release, "-n", ns, "--all", "-o", "json").stdout)
        assert merged["crds"] == {"enabled": True, "keep": True}

        # The new chart's user roles reach Kubernetes' edit and view through aggregation.
        kubectl("create", "rolebinding", "alice-edit", "-n", namespace, "--clusterrole=edit", "--user=alice")
        kubectl("create", "rolebinding", "bob-view", "-n", namespace, "--clusterrole=view", "--user=bob")

        def can(user: str, verb: str, resource: str, *extra: str) -> bool:
            out = kubectl("auth", "can-i", verb, resource, *extra, "-n", namespace, f"--as={user}", check=False)
            return out.stdout.strip() == "yes"

        wait_until("edit aggregating modelops-edit", lambda: can("alice", "create", "trainingruns.modelops.dev"))
        wait_until("view aggregating modelops-view", lambda: can("bob", "list", "modeldeployments.modelops.dev"))
        assert can("alice", "delete", "datasets.modelops.dev")
        # (`datasets.modelops.dev/status` would ask about a Dataset named "status": the subresource is a flag.)
        assert can("alice", "get", "datasets.modelops.dev", "--subresource=status")
        assert not can("alice", "patch", "datasets.modelops.dev", "--subresource=status")
        assert not can("bob", "create", "datasets.modelops.dev")

        # Uninstalling leaves the CRDs, and with them every object.
        helm("uninstall", release, "-n", ns, "--wait")
        kept = {name: crd(name) for name in CRD_NAMES}  # kubectl fails on a missing one
        schema = kept["datasets.modelops.dev"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert NEW_FIELD in schema["properties"]["spec"]["properties"]
        for plural, name in plurals.items():
            assert get(custom, namespace, plural, name)["metadata"]["uid"] == before[plural]["metadata"]["uid"]
    finally:
        helm("uninstall", release, "-n", ns, "--wait", check=False)
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
        # Back to this tree's CRDs (without the added field or Helm's ownership) for the tests after.
        kubectl("replace", "-f", str(REPO / "crds"))
        kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
