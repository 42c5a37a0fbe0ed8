"""The ModelDeployment's alert rules: the PrometheusRule's shape, `promtool check rules` on the groups,
and `promtool test rules` fixtures that feed series to the rules and expect alerts to fire or not.

promtool comes from the same Go module as prometheus (hack/build-binaries.sh) and is looked up where
the cluster tests look up their binaries; the promtool tests skip only when it has not been built.
Each fixture is generated here per case: the series carry the labels the server pods' metrics carry
in Prometheus (`namespace`, `modelops_dev_modeldeployment`, `modelops_dev_track`, ...), plus noise
from another ModelDeployment and another namespace that the selectors must ignore.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops_operator.api.modeldeployment import Alerts, ModelDeploymentSpec
from modelops_operator.builders.alerts import (
    ALERT_NAMES,
    CANARY_ANALYSIS_FAILED,
    HIGH_ERROR_RATE,
    HIGH_LATENCY_P99,
    MODEL_LOAD_FAILURES,
    NO_READY_REPLICAS,
    build_prometheus_rule,
    rule_groups,
)
from tests.support.objects import model_deployment
from tests.support.tools import missing

#: Where hack/build-binaries.sh puts the binaries (as tests/support/cluster.py's BIN).
BIN = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache" / "modelops")) / "bin"
PROMTOOL = BIN / "promtool"
NS, NAME = "ml", "digits"
RUNBOOKS = "https://runbooks.example.com/modelops/"

ALERTS_CASES = {
    "defaults": Alerts(),
    "custom": Alerts.model_validate(
        {"errorRate": 0.02, "latencyP99Seconds": 0.25, "for": "2m", "severity": "critical", "runbookUrl": RUNBOOKS}
    ),
    "awkward-floats": Alerts.model_validate(
        {
            "errorRate": 0.1 + 0.2,
            "latencyP99Seconds": 1e-05,
            "for": "1h30m",
            "severity": "info",
            "runbookUrl": "http://rb",
        }
    ),
}


@pytest.fixture(scope="module")
def promtool() -> Path:
    if not os.access(PROMTOOL, os.X_OK):
        missing(f"promtool ({PROMTOOL})", "build it with `hack/build-binaries.sh prometheus` (hack/setup.sh does)")
    return PROMTOOL


# --- (a) the PrometheusRule's shape ------------------------------------------------------------


@pytest.mark.parametrize("alerts", ALERTS_CASES.values(), ids=ALERTS_CASES.keys())
def test_prometheus_rule_shape(alerts: Alerts) -> None:
    md = model_deployment(NAME).set("metadata.namespace", NS).set("metadata.uid", "uid-1").obj()
    md["spec"]["alerts"] = alerts.model_dump(by_alias=True, exclude_none=True)
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    rule = build_prometheus_rule(md, spec)

    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    meta = rule["metadata"]
    assert meta["name"] == f"{NAME}-alerts" and meta["namespace"] == NS
    assert meta["labels"]["modelops.dev/modeldeployment"] == NAME
    assert meta["labels"]["app.kubernetes.io/component"] == "alerts"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": md["apiVersion"],
            "kind": "ModelDeployment",
            "name": NAME,
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    [group] = rule["spec"]["groups"]
    assert group["name"] == f"modelops.{NS}.{NAME}"
    assert [r["alert"] for r in group["rules"]] == list(ALERT_NAMES)
    for r in group["rules"]:
        assert r["for"] == ("0m" if r["alert"] == CANARY_ANALYSIS_FAILED else alerts.for_)
        assert r["labels"] == {"severity": alerts.severity, "namespace": NS, "modeldeployment": NAME}
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        if alerts.runbook_url:
            assert r["annotations"]["runbook_url"] == alerts.runbook_url.rstrip("/") + "/" + r["alert"]
        else:
            assert "runbook_url" not in r["annotations"]
    exprs = {r["alert"]: r["expr"] for r in group["rules"]}
    # Thresholds round-trip exactly (repr), whatever the float.
    assert float(exprs[HIGH_ERROR_RATE].rsplit(">", 1)[1]) == alerts.error_rate
    assert float(exprs[HIGH_LATENCY_P99].rsplit(">", 1)[1]) == alerts.latency_p99_seconds
    assert f'deployment="{NAME}-stable"' in exprs[NO_READY_REPLICAS]
    assert f'modeldeployment="{NAME}"' in exprs[CANARY_ANALYSIS_FAILED]
    for alert in (HIGH_ERROR_RATE, HIGH_LATENCY_P99, MODEL_LOAD_FAILURES):
        assert f'namespace="{NS}",modelops_dev_modeldeployment="{NAME}"' in exprs[alert]


# --- (b) promtool check rules ------------------------------------------------------------------


@pytest.mark.parametrize("alerts", ALERTS_CASES.values(), ids=ALERTS_CASES.keys())
def test_promtool_check_rules(alerts: Alerts, promtool: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    groups = rule_groups(NS, NAME, alerts) + rule_groups("other-ns", "other-md", alerts)
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    done = subprocess.run(
        [str(promtool), "check", "rules", "--lint=all", "--lint-fatal", str(rules)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 10 rules found" in done.stdout


# --- (c) promtool test rules -------------------------------------------------------------------


def series(metric: str, values: Sequence[float | None], **labels: str) -> dict[str, str]:
    """One input series, one value a minute from t=0 (None: no sample); `namespace` and
    `modelops_dev_modeldeployment` default to the deployment under test; an empty value drops a label."""
    labels = {k: v for k, v in ({"namespace": NS, "modelops_dev_modeldeployment": NAME} | labels).items() if v}
    selector = metric + "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in labels.items()) + "}"
    return {"series": selector, "values": " ".join("_" if v is None else repr(v) for v in values)}


def counter(per_minute: float, minutes: int = 30, start: float = 0) -> list[float | None]:
    """A counter rising by `per_minute` each minute."""
    return [start + per_minute * i for i in range(minutes + 1)]


def requests(per_minute: float, code: str, track: str = "stable", **labels: str) -> dict[str, str]:
    return series(
        "modelops_requests_total",
        counter(per_minute),
        **{"modelops_dev_track": track, "code": code, "model": "digits-resnet", "version": "v1", "endpoint": "infer"}
        | labels,
    )


def latency(per_minute: float, upper: str, track: str) -> list[dict[str, str]]:
    """Bucket series of requests all taking between the bucket below `upper` and `upper` seconds."""
    bounds = ["0.1", "0.5", "1.0", "2.5", "+Inf"]
    out = []
    for le in bounds:
        rate = per_minute if float(le) >= float(upper) else 0
        out.append(
            series(
                "modelops_request_duration_seconds_bucket",
                counter(rate),
                modelops_dev_track=track,
                model="digits-resnet",
                version="v1",
                endpoint="infer",
                le=le,
            )
        )
    return out


#: Traffic of other deployments that must not reach the rules under test.
NOISE = [
    requests(100, "500", modelops_dev_modeldeployment="other"),
    requests(100, "503", namespace="other-ns"),
    *[s | {"series": s["series"].replace(f'"{NAME}"', '"other"')} for s in latency(50, "+Inf", "stable")],
    series("modelops_model_loads_total", counter(1), modelops_dev_modeldeployment="other", result="failure"),
    series("modelops_rollout_aborted", [1] * 31, modelops_dev_modeldeployment="", modeldeployment="other"),
]


def render(alert: str, alerts: Alerts, value: str, labels: dict[str, str] | None = None) -> dict[str, str]:
    """The rule's annotations as Prometheus renders them, `$value` formatted as `value`."""
    [group] = rule_groups(NS, NAME, alerts)
    [rule] = [r for r in group["rules"] if r["alert"] == alert]
    out = {}
    for key, template in rule["annotations"].items():
        text = re.sub(r"\{\{ \$value[^}]*\}\}", value, template)
        out[key] = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: (labels or {})[m.group(1)], text)
    return out


def firing(alerts: Alerts, **extra_labels: str) -> dict[str, Any]:
    return {"exp_labels": {"severity": alerts.severity, "namespace": NS, "modeldeployment": NAME} | extra_labels}


@dataclass
class Case:
    alerts: Alerts
    input_series: list[dict[str, str]]
    #: (minute, alert name, the alerts expected to fire then)
    checks: list[tuple[int, str, list[dict[str, Any]]]] = field(default_factory=list)


def cases() -> dict[str, Case]:
    default, custom = ALERTS_CASES["defaults"], ALERTS_CASES["custom"]
    ten_percent = [requests(80, "200"), requests(10, "200", track="canary"), requests(10, "500", track="canary")]
    return {
        # Errors from t=0: the 5m rate exists from 1m, so a 5m `for` fires at 6m and not at 5m.
        "error-rate-fires-after-for": Case(
            default,
            ten_percent,
            [
                (5, HIGH_ERROR_RATE, []),
                (
                    6,
                    HIGH_ERROR_RATE,
                    [
                        firing(default)
                        | {
                            "exp_annotations": {
                                "summary": f"ModelDeployment {NS}/{NAME} answers too many requests with 5xx",
                                "description": f"10% of the requests to ModelDeployment {NS}/{NAME} (stable and "
                                "canary) failed with a 5xx status over the last 5m; the threshold is 5%.",
                            }
                        }
                    ],
                ),
                (20, HIGH_ERROR_RATE, [firing(default) | {"exp_annotations": render(HIGH_ERROR_RATE, default, "10%")}]),
            ],
        ),
        "error-rate-custom-for-severity-runbook": Case(
            custom,
            [*ten_percent, requests(5, "502")],
            [
                (2, HIGH_ERROR_RATE, []),
                (3, HIGH_ERROR_RATE, [firing(custom) | {"exp_annotations": render(HIGH_ERROR_RATE, custom, "14.29%")}]),
            ],
        ),
        "error-rate-below-threshold": Case(
            default,
            [requests(97, "200"), requests(2, "500"), requests(1, "503", track="canary"), requests(50, "404")],
            [(m, HIGH_ERROR_RATE, []) for m in (6, 15, 30)],
        ),
        "no-traffic": Case(
            default,
            [requests(0, "200"), requests(0, "500", track="canary"), *latency(0, "2.5", "stable")],
            [(m, alert, []) for m in (6, 15, 30) for alert in (HIGH_ERROR_RATE, HIGH_LATENCY_P99)],
        ),
        # Stable answers 90/min in under 0.1 s, the canary 10/min in 1-2.5 s: p99 of both is 2.35 s.
        "latency-p99-fires": Case(
            default,
            [*latency(90, "0.1", "stable"), *latency(10, "2.5", "canary")],
            [
                (5, HIGH_LATENCY_P99, []),
                (
                    6,
                    HIGH_LATENCY_P99,
                    [firing(default) | {"exp_annotations": render(HIGH_LATENCY_P99, default, "2.35s")}],
                ),
            ],
        ),
        "latency-p99-below-threshold": Case(
            default,
            [*latency(99, "0.5", "stable"), *latency(1, "+Inf", "canary")],
            [(m, HIGH_LATENCY_P99, []) for m in (6, 15, 30)],
        ),
        # The stable Deployment loses its last replica at 3m; the canary's (scaled to 0) never alerts.
        "no-ready-replicas": Case(
            default,
            [
                ksm := series(
                    "kube_deployment_status_replicas_available",
                    [2, 2, 2] + [0] * 28,
                    modelops_dev_modeldeployment="",
                    deployment=f"{NAME}-stable",
                    job="kube-state-metrics",
                ),
                ksm | {"series": ksm["series"].replace("-stable", "-canary"), "values": "0x30"},
                ksm | {"series": ksm["series"].replace(NAME, "other"), "values": "0x30"},
            ],
            [
                (7, NO_READY_REPLICAS, []),
                (
                    8,
                    NO_READY_REPLICAS,
                    [
                        firing(default, deployment=f"{NAME}-stable", job="kube-state-metrics")
                        | {"exp_annotations": render(NO_READY_REPLICAS, default, "")}
                    ],
                ),
            ],
        ),
        # `for: 0m`: fires at the first evaluation that sees the gauge at 1.
        "rollout-aborted": Case(
            custom,
            [
                series(
                    "modelops_rollout_aborted",
                    [0, 0, 0, 1, 1, 1, 0, 0],
                    modelops_dev_modeldeployment="",
                    modeldeployment=NAME,
                    pod="modelops-operator-0",
                )
            ],
            [
                (2, CANARY_ANALYSIS_FAILED, []),
                (
                    3,
                    CANARY_ANALYSIS_FAILED,
                    [firing(custom) | {"exp_annotations": render(CANARY_ANALYSIS_FAILED, custom, "")}],
                ),
                (6, CANARY_ANALYSIS_FAILED, []),
            ],
        ),
        # An existing failure counter rises at 7m: `increase` sees it; `for: 2m` fires at 9m.
        "model-load-failure-increase": Case(
            custom,
            [
                series("modelops_model_loads_total", [0] * 7 + [1] * 24, modelops_dev_track="canary", result="failure"),
                series("modelops_model_loads_total", counter(1), modelops_dev_track="stable", result="success"),
            ],
            [
                (8, MODEL_LOAD_FAILURES, []),
                (
                    9,
                    MODEL_LOAD_FAILURES,
                    [
                        firing(custom, modelops_dev_track="canary")
                        | {
                            "exp_annotations": render(
                                MODEL_LOAD_FAILURES, custom, "1", {"modelops_dev_track": "canary"}
                            )
                        }
                    ],
                ),
            ],
        ),
        # The server creates the failure series at its first failure (value 1, at 3m): no `increase`,
        # but a series that was not there 10m before. It fires at 5m and resolves 10m after the failure.
        "model-load-failure-new-series": Case(
            custom,
            [
                series(
                    "modelops_model_loads_total", [None] * 3 + [1] * 28, modelops_dev_track="stable", result="failure"
                )
            ],
            [
                (4, MODEL_LOAD_FAILURES, []),
                (
                    5,
                    MODEL_LOAD_FAILURES,
                    [
                        firing(custom, modelops_dev_track="stable")
                        | {
                            "exp_annotations": render(
                                MODEL_LOAD_FAILURES, custom, "1", {"modelops_dev_track": "stable"}
                            )
                        }
                    ],
                ),
                (14, MODEL_LOAD_FAILURES, []),
            ],
        ),
    }


CASES = cases()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_promtool_test_rules(case: Case, promtool: Path, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups(NS, NAME, case.alerts)}))
    checked = {alert for _, alert, _ in case.checks}
    unit = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": case.input_series + NOISE,
                "alert_rule_test": [
                    {"eval_time": f"{minute}m", "alertname": alert, "exp_alerts": expected}
                    for minute, alert, expected in case.checks
                ]
                # Every other alert stays quiet throughout.
                + [
                    {"eval_time": f"{minute}m", "alertname": alert, "exp_alerts": []}
                    for alert in ALERT_NAMES
                    if alert not in checked
                    for minute in (5, 10, 20, 30)
                ],
            }
        ],
    }
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(unit, sort_keys=False))
    done = subprocess.run(
        [str(promtool), "test", "rules", str(test_file)], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
