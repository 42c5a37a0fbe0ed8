#!/usr/bin/env python3
"""Generate the inference server's gRPC code from its .proto, or check that the committed code is current.

    hack/protogen.py           write grpc_predict_v2_pb2.py, .pyi and _pb2_grpc.py beside the .proto
    hack/protogen.py --check   exit 1 when any of them differs from what grpcio-tools generates now

The generated files are committed, so that the server's wheel and image need no grpcio-tools (a
development dependency, pinned in constraints.txt: another grpcio-tools release writes other code,
and --check then says so). hack/test.sh runs the check.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "server_image" / "src"
PROTO = Path("modelops_server/proto/grpc_predict_v2.proto")
OUTPUTS = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")


def generate(out: Path) -> dict[str, bytes]:
    """Run grpcio-tools' protoc into `out`; return the generated files by name."""
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{SRC}",
        f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", str(PROTO),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"protoc failed: {res.stderr.strip()}")
    return {name: (out / PROTO.parent / name).read_bytes() for name in OUTPUTS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/protogen.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
    target = SRC / PROTO.parent
    stale = [
        name for name, data in files.items() if not (target / name).exists() or (target / name).read_bytes() != data
    ]
    if args.check:
        if stale:
            print(f"stale generated gRPC code: {', '.join(stale)}; run hack/protogen.py", file=sys.stderr)
            return 1
        return 0
    for name in stale:
        (target / name).write_bytes(files[name])
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
