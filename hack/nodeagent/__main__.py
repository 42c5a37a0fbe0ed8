"""The modelops local node agent: runs the pods bound to one node as local processes.

    python hack/nodeagent --kubeconfig .cluster/kubeconfig --node local-0

A development tool for the local cluster (hack/cluster.py starts it), standing in for the kubelet
on one node; not part of the product. What it does and does not do is in hack/nodeagent/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from agent import Agent


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/nodeagent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig with rights to nodes, pods, PVs, leases")
    parser.add_argument("--node", default="local-0", help="the Node's name (default: %(default)s)")
    parser.add_argument("--state-dir", type=Path, required=True, help="where pod directories, volumes and logs live")
    parser.add_argument(
        "--api-server", required=True, help="the API server's URL, given to pods as KUBERNETES_SERVICE_*"
    )
    parser.add_argument("--logs-port", type=int, default=10250, help="port of the `kubectl logs` endpoint")
    parser.add_argument(
        "--forward",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help="make 127.0.0.1:PORT on this machine reachable from pods at 10.250.0.1:PORT (repeatable; "
        "the local cluster forwards Prometheus)",
    )
    parser.add_argument("--tls-cert", type=Path, help="serving certificate of the logs endpoint")
    parser.add_argument("--tls-key", type=Path, help="its key")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    tls = (args.tls_cert, args.tls_key) if args.tls_cert and args.tls_key else None
    repo = Path(__file__).resolve().parents[2]
    Agent(
        args.kubeconfig, args.node, args.state_dir.resolve(), repo, args.api_server, args.logs_port, tls, args.forward
    ).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
