#!/usr/bin/env bash
# The GPU run of issue #21 in one command: trainer throughput (ResNet-50, bf16 + channels_last,
# synthetic 224 px), ONNX parity CUDA vs CPU, the CUDA/cuDNN libraries ONNX Runtime and PyTorch
# loaded, and the inference server with ONNX Runtime's CUDA provider, dynamic batching against
# --max-batch-size 1 at 1 and 64 connections. What each part measures: bench/gpu_bench.py.
#
#   bench/gpu.sh                  # writes bench/results/gpu.json, or $OUT/gpu.json when OUT is set
#   GPU_BENCH_OUTPUT=x.json bench/gpu.sh
#   PYTHON=.venv/bin/python GPU_BENCH_INSTALL=0 bench/gpu.sh   # use that interpreter as it is
#
# Needs one NVIDIA GPU with its driver and a Python 3.11+; everything else comes from PyPI into
# a virtualenv (build/gpu-venv, git-ignored) that also sees the interpreter's own packages, so a
# preinstalled PyTorch is used as it is and only what is missing is downloaded: ONNX Runtime with
# the CUDA provider and its CUDA/cuDNN libraries (onnxruntime-gpu[cuda,cudnn], as the server
# image installs it), the project's pure-Python needs, and PyTorch only where there is none. The
# project itself runs from this tree (PYTHONPATH), not installed. Where PyPI cannot be reached
# the run goes on with what is there, and the JSON says which parts could not run.
#
# About 2 minutes of measuring on one H200 (109 s on 2026-12-04, bench/results/gpu.json); installs and all
# are held to GPU_BENCH_MINUTES (8), after which the measuring stops and what was measured is
# written. Without CUDA it runs a reduced version on the CPU and writes "device": "cpu"
# (bench/results/gpu-cpu-fallback.json is that, from a 2-core machine).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
log() { printf '[gpu.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [[ -n "${GPU_BENCH_OUTPUT:-}" ]]; then
  output=$GPU_BENCH_OUTPUT
elif [[ -n "${OUT:-}" ]]; then
  output=$OUT/gpu.json
else
  output=$repo/bench/results/gpu.json
fi
python=${PYTHON:-python3}
gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=1
  nvidia-smi -L >&2
fi

if [[ "${GPU_BENCH_INSTALL:-1}" == 1 ]]; then
  venv=${GPU_BENCH_VENV:-$repo/build/gpu-venv}
  if [[ ! -x $venv/bin/python ]]; then
    log "creating $venv (sees $("$python" -c 'import sys; print(sys.executable)')'s packages)"
    if "$python" -m venv --system-site-packages "$venv"; then
      # --system-site-packages shows the base interpreter's packages; when $python is itself a
      # virtualenv (as on machines whose PyTorch lives in one), a .pth file shows its packages
      # too, after the new venv's own.
      "$python" -c 'import site, sys; sys.prefix != sys.base_prefix and print("\n".join(site.getsitepackages()))' \
        >"$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')/_gpu_bench_parent.pth"
    else
      log "no virtualenv could be made (python3-venv missing?): using $python as it is"
      venv=
    fi
  fi
fi
if [[ "${GPU_BENCH_INSTALL:-1}" == 1 && -n ${venv:-} ]]; then
  py=$venv/bin/python
  # Import name → PyPI name of what the trainer, the server and the benchmarks import.
  missing=$("$py" - "$gpu" <<'EOF'
import importlib.util
import sys

gpu = sys.argv[1] == "1"
needed = {
    "torch": "torch", "torchvision": "torchvision", "onnx": "onnx", "onnxscript": "onnxscript",
    "numpy": "numpy", "PIL": "pillow", "pydantic": "pydantic", "fsspec": "fsspec",
    "pythonjsonlogger": "python-json-logger", "tqdm": "tqdm", "aiohttp": "aiohttp",
    "prometheus_client": "prometheus-client", "orjson": "orjson", "pybase64": "pybase64", "uvloop": "uvloop",
    "sklearn": "scikit-learn", "grpc": "grpcio", "grpc_health": "grpcio-health-checking", "redis": "redis",
}
missing = [pkg for module, pkg in needed.items() if importlib.util.find_spec(module) is None]
try:
    import onnxruntime

    cuda_provider = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
except ImportError:
    onnxruntime, cuda_provider = None, False
if gpu and not cuda_provider:
    # The server image's set: CUDA 13 and cuDNN 9 from NVIDIA's pip packages (server_image/Dockerfile).
    missing += ["onnxruntime-gpu[cuda,cudnn]", "nvidia-curand==10.4.2.66"]
elif onnxruntime is None:
    missing.append("onnxruntime")
print(" ".join(missing))
EOF
  )
  if [[ -n $missing ]]; then
    log "installing from PyPI: $missing"
    # Short network timeouts: a machine without an index must not spend the run's minutes on retries.
    pip_opts="--disable-pip-version-check --timeout 20 --retries 1"
    # The project's pins first (constraints.txt: the versions CI and the images use); without
    # them if this Python has no wheel for a pinned version.
    # shellcheck disable=SC2086  # $missing is a list of requirement specifiers
    if ! "$py" -m pip install -q $pip_opts --constraint constraints.txt $missing; then
      # shellcheck disable=SC2086
      "$py" -m pip install -q $pip_opts $missing ||
        log "could not install $missing (no index reachable?): going on with what is installed"
    fi
  else
    log "nothing to install"
  fi
else
  py=$python
fi

# ONNX Runtime loads the CUDA and cuDNN libraries by name: point it at NVIDIA's pip packages, as
# server_image/Dockerfile does (PyTorch finds its own; the libraries part checks that both agree).
nvlibs=$("$py" -c '
import glob, os, sys
dirs = [d for p in sys.path if p for d in sorted(glob.glob(os.path.join(p, "nvidia", "*", "lib")))]
print(":".join(dict.fromkeys(dirs)))')
export LD_LIBRARY_PATH=${nvlibs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONPATH=$repo/trainer_image/src:$repo/server_image/src:$repo${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# The whole run fits in GPU_BENCH_MINUTES (8): what the installs left, less a margin to stop the
# servers. At the limit gpu_bench.py gets SIGTERM and writes what it measured so far.
left=$(( ${GPU_BENCH_MINUTES:-8} * 60 - SECONDS - 20 ))
(( left >= 60 )) || left=60
log "running bench/gpu_bench.py with $("$py" -c 'import sys; print(sys.version.split()[0])') for at most ${left}s → $output"
exec timeout --kill-after=15 "$left" "$py" bench/gpu_bench.py --output "$output" "$@"
