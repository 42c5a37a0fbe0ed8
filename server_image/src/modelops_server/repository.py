"""The model repository extension, protocol-neutral: index, load and unload, and who may call them.

REST (``endpoints``) and gRPC (``grpc_server``) both call these with what their request carried: the
model name, the parameters as plain values and the ``Authorization`` value. One server serves one
model name; its repository is that model's versions. The index is always readable. Load and unload
change what is served, so they need ``--enable-model-control`` and the bearer token
(``--model-control-token``, compared in constant time), and a load of a new file needs its digest:

- ``load`` with ``uri`` and ``digest`` (and optionally ``version``) as parameters, or inside the
  ``config`` parameter as a JSON object (how tritonclient's ``load_model(config=...)`` sends them),
  fetches, verifies and hot-swaps to that file;
- ``load`` without them serves the last version loaded under that name again (after an unload),
  its digest checked again;
- ``unload`` stops serving: readiness turns false, requests get ``Unavailable``, until a load.

While an A/B experiment runs (``--experiment``), load and unload are refused with :class:`Conflict`
(409, gRPC ``FAILED_PRECONDITION``): the variants are fixed for the server's life.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson

from modelops_server import errors
from modelops_server.dataplane import DataPlane, IndexEntry, ServedModel

LOAD_HELP = (
    'send {"parameters": {"uri": "...", "digest": "sha256:...", "version": "..."}}: uri and digest are required '
    "(parameters.config may hold the same object as a JSON string)"
)


def authorize(enabled: bool, token: str, authorization: str) -> None:
    """Raise :class:`ModelControlDisabled` unless control is on and `authorization` carries the token."""
    if not enabled:
        raise errors.ModelControlDisabled("model control is disabled; start the server with --enable-model-control")
    if not token or not hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
        raise errors.ModelControlDisabled("a hot swap needs the header Authorization: Bearer <model control token>")


def index(plane: DataPlane, *, ready_only: bool = False) -> list[IndexEntry]:
    """The repository index (the served version, or the one last unloaded)."""
    return [e for e in plane.index() if e.state == "READY" or not ready_only]


def _source(params: dict[str, Any]) -> dict[str, Any] | None:
    """``uri``/``digest``/``version`` from the parameters or their ``config`` JSON; None when absent."""
    config = params.get("config")
    if config is not None:
        try:
            doc = orjson.loads(config)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise errors.RequestError(f"parameters.config is not a JSON object: {LOAD_HELP}") from exc
        if not isinstance(doc, dict):
            raise errors.RequestError(f"parameters.config is not a JSON object: {LOAD_HELP}")
        params = {**params, **doc}
    if params.get("uri") is None and params.get("digest") is None:
        return None
    uri, digest, version = params.get("uri"), params.get("digest"), params.get("version")
    if not isinstance(uri, str) or not isinstance(digest, str) or not isinstance(version, str | None):
        raise errors.RequestError(LOAD_HELP)
    return {"uri": uri, "digest": digest, "version": version}


def _known(plane: DataPlane, name: str) -> None:
    if name not in plane.sources:
        served = ", ".join(repr(n) for n in sorted(plane.sources)) or "no model yet"
        raise errors.NotFound(f"this server serves {served}, not {name!r}")


async def load(plane: DataPlane, name: str, params: dict[str, Any]) -> ServedModel:
    """Load `name` (see the module docstring); the caller has authorized the request."""
    _known(plane, name)
    source = _source(params)
    if source is None:
        known = plane.sources[name]
        source = {"uri": known.uri, "digest": known.digest, "version": known.version}
    try:
        return await plane.load(source["uri"], digest=source["digest"], version=source["version"], name=name)
    except errors.ModelLoadError as exc:
        raise errors.RequestError(f"the new model was not loaded (the old one still serves): {exc}") from exc


async def unload(plane: DataPlane, name: str) -> ServedModel:
    """Unload `name`; the caller has authorized the request."""
    _known(plane, name)
    return await plane.unload(name)
