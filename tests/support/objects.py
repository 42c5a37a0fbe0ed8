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
