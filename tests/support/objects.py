"""Small fluent builders for test objects: `dataset().set("spec.split.train", 0.7).obj()`.

Each starts from a minimal valid object, so a test states only what it is about.
"""

from __future__ import annotations

import copy
from typing import Any, Self

from modelops_operator.api.common import API_VERSION


class ObjectBuilder:
    def __init__(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        self._obj: dict[str, Any] = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}

    def set(self, path: str, value: Any) -> Self:
        """Set a dotted path (`spec.sources.0.uri`); list indexes are numbers."""
        *parents, last = path.split(".")
        node: Any = self._obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return self

    def drop(self, path: str) -> Self:
        """Remove a dotted path."""
        *parents, last = path.split(".")
        node: Any = self._obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]
        return self

    def named(self, name: str) -> Self:
        self._obj["metadata"]["name"] = name
        return self

    def obj(self) -> dict[str, Any]:
        return copy.deepcopy(self._obj)

    @property
    def spec(self) -> dict[str, Any]:
        return copy.deepcopy(self._obj["spec"])


def dataset(name: str = "digits") -> ObjectBuilder:
    return ObjectBuilder("Dataset", name, {"sources": [{"uri": "file:///data/digits"}]})


def training_run(name: str = "digits-resnet", dataset_name: str = "digits") -> ObjectBuilder:
    return ObjectBuilder("TrainingRun", name, {"datasetRef": {"name": dataset_name}})


def model_deployment(name: str = "digits", run: str = "digits-resnet") -> ObjectBuilder:
    return ObjectBuilder("ModelDeployment", name, {"model": {"trainingRunRef": {"name": run}}})


def search(*parameters: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A search block with the given parameters (default: one logUniform learning rate)."""
    params = list(parameters) or [{"name": "learningRate", "type": "logUniform", "min": 1e-4, "max": 1e-2}]
    return {"parameters": params, **fields}


DIGEST = "sha256:" + "ab" * 32


class RouteBuilder:
    """A Gateway API HTTPRoute in namespace `ns`, handed to the ModelDeployment `owner`, with its
    rules and status as the API server stores them (defaults filled in):
    `http_route().rule(("web", 1)).split(30).parent().obj()`."""

    def __init__(self, name: str, owner: str | None) -> None:
        annotations = {"modelops.dev/modeldeployment": owner} if owner else {}
        self._obj: dict[str, Any] = {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {
                "name": name,
                "namespace": "ns",
                "annotations": annotations,
                "generation": 1,
                "resourceVersion": "4711",
            },
            "spec": {"parentRefs": [{"name": "gw"}], "rules": []},
            "status": {"parents": []},
        }
        self._owner = owner or "digits"

    def rule(self, *backends: tuple[str, int], path: str = "/", header: tuple[str, str] | None = None) -> Self:
        """A rule sending requests under `path` (with the header, if given) to Services (name, weight)."""
        match: dict[str, Any] = {"path": {"type": "PathPrefix", "value": path}}
        if header is not None:
            match["headers"] = [{"type": "Exact", "name": header[0], "value": header[1]}]
        refs = [{"group": "", "kind": "Service", "name": svc, "port": 80, "weight": w} for svc, w in backends]
        self._obj["spec"]["rules"].append({"matches": [match], "backendRefs": refs})
        return self

    def split(self, canary: int) -> Self:
        """The operator's weighted rule, `canary`% to `<owner>-canary` and the rest to `<owner>-stable`."""
        return self.rule((f"{self._owner}-stable", 100 - canary), (f"{self._owner}-canary", canary))

    def generation(self, generation: int) -> Self:
        self._obj["metadata"]["generation"] = generation
        return self

    def parent(
        self,
        accepted: str = "True",
        resolved: str = "True",
        *,
        reason: str = "",
        message: str = "",
        observed: int | None = None,
        gateway: str = "gw",
    ) -> Self:
        """A parent Gateway's report on the route (its `Accepted` and `ResolvedRefs` conditions, at
        generation `observed`: by default the route's current one)."""
        gen = self._obj["metadata"]["generation"] if observed is None else observed

        def cond(type_: str, status: str) -> dict[str, Any]:
            why = reason if status != "True" else type_
            return {"type": type_, "status": status, "reason": why, "message": message, "observedGeneration": gen}

        self._obj["status"]["parents"].append(
            {
                "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway},
                "controllerName": "traefik.io/gateway-controller",
                "conditions": [cond("Accepted", accepted), cond("ResolvedRefs", resolved)],
            }
        )
        return self

    def obj(self) -> dict[str, Any]:
        return copy.deepcopy(self._obj)


def http_route(name: str = "digits-route", owner: str | None = "digits") -> RouteBuilder:
    return RouteBuilder(name, owner)
