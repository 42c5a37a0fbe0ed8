"""The operator's Prometheus client: one instant query, one number (canary analysis).

Standard library only. A query that returns no sample, or NaN (no traffic: 0/0), is "no data"
(None), which analysis counts as inconclusive — never as a pass.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request


class PrometheusError(Exception):
    """Prometheus could not be reached or refused the query; str() says which and why."""


def query(base_url: str, promql: str, timeout: float = 10.0) -> float | None:
    """The value of an instant query: its first sample (a scalar or a one-element vector)."""
    url = base_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            doc = json.load(response)
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:300]
        raise PrometheusError(f"Prometheus at {base_url} refused {promql!r}: {e.code} {detail}") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise PrometheusError(f"Prometheus at {base_url} unreachable: {e}") from e
    if doc.get("status") != "success":
        raise PrometheusError(f"Prometheus at {base_url}: {doc.get('error', doc)}")
    data = doc.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar" and result:
        raw = result[1]
    elif isinstance(result, list) and result:
        raw = result[0]["value"][1]
    else:
        return None
    value = float(raw)
    return value if math.isfinite(value) else None
