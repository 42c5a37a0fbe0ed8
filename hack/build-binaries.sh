#!/usr/bin/env bash
# Builds the local cluster's binaries from their Go modules, each into a cache keyed by version:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#   kubelet, kube-proxy                                              (k8s.io/kubernetes: the real node)
#   coredns (only the plugins the cluster's Corefile uses)           (github.com/coredns/coredns)
#   etcd                                                             (go.etcd.io/etcd/server/v3)
#   kwok                                                             (sigs.k8s.io/kwok)
#   helm                                                             (helm.sh/helm/v3)
#   training-operator                                                (github.com/kubeflow/training-operator)
#   prometheus, promtool                                             (github.com/prometheus/prometheus)
#   metrics-server (metrics.k8s.io for CPU/memory HPAs, kubectl top) (sigs.k8s.io/metrics-server)
#   custom-metrics-adapter: custom.metrics.k8s.io for pods, from      (sigs.k8s.io/custom-metrics-apiserver)
#     Prometheus (HPAs on a per-pod metric); our own small program in hack/gomod/custom-metrics-adapter,
#     keyed by a hash of its module
#   kueue (job queueing: admission by quota, preemption by priority)  (sigs.k8s.io/kueue)
#   trainer-controller-manager (Kubeflow Trainer v2: TrainJob)        (github.com/kubeflow/trainer/v2)
#   jobset (JobSet: what Trainer v2 runs a TrainJob as)               (sigs.k8s.io/jobset)
#   traefik (the Gateway API implementation: HTTPRoute weights and  (github.com/traefik/traefik/v3,
#     header matches, measured through it by tests/e2e/test_gateway_e2e.py)    without ACME DNS-01)
#   modelops-health: kstatus's and Argo CD's verdicts on objects      (sigs.k8s.io/cli-utils, github.com/argoproj/argo-cd/v3)
#     for the unit tests of our status (tests/operator/test_health.py)
# Each binary is named by its version and a hash of its wrapper module's files (go.mod, go.sum and
# any source), and one already in the cache is not rebuilt: a wrapper changed in git (a dependency
# raised, a stub replaced) is built again on a machine that has the binary of the old one.
# Usage: hack/build-binaries.sh [NAME[+NAME...] ...]
# Prints the bin directory on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/versions.env
. "$here/versions.env"
cache=${MODELOPS_CACHE:-$HOME/.cache/modelops}
bin="$cache/bin"
mkdir -p "$bin"
export GOFLAGS="${GOFLAGS:-} -mod=mod -buildvcs=false"

log() { printf '[build-binaries] %s\n' "$*" >&2; }

# modhash DIR: the first 12 hex digits of a hash of every file of the wrapper module hack/gomod/DIR.
modhash() {
  (cd "$here/gomod/$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-12
}

# go_output PACKAGE: the file go build writes for PACKAGE (its last element; go drops a /vN suffix).
go_output() {
  local built; built=$(basename "$1")
  [[ $built =~ ^v[0-9]+$ ]] && built=$(basename "$(dirname "$1")")
  echo "$built"
}

# binary PACKAGE[:BINARY]: the binary's name in $bin, BINARY or else go build's name for PACKAGE.
binary() { if [[ $1 == *:* ]]; then echo "${1##*:}"; else go_output "$1"; fi; }

# built VERSION MODULE_DIR PACKAGE[:BINARY]...: whether each binary is in the cache as
# BINARY-VERSION-<modhash MODULE_DIR> (or BINARY-<hash> for an empty VERSION); if so, link them.
built() {
  local version=$1 dir=$2 p; shift 2
  version=${version:+$version-}$(modhash "$dir")
  for p in "$@"; do [ -x "$bin/$(binary "$p")-$version" ] || return 1; done
  for p in "$@"; do ln -sf "$(binary "$p")-$version" "$bin/$(binary "$p")"; done
}

# build NAME VERSION MODULE_DIR LDFLAGS PACKAGE[:BINARY]...: unless `built` finds them, go build each
# package into $bin/BINARY-VERSION-<modhash MODULE_DIR>, link $bin/BINARY to it, and delete the
# other $bin/BINARY-* it replaces.
build() {
  local name=$1 version=$2 dir=$3 ldflags=$4; shift 4
  if built "$version" "$dir" "$@"; then return 0; fi
  version=${version:+$version-}$(modhash "$dir")
  log "building $name $version (cold: minutes on 2 cores)"
  local tmp; tmp=$(mktemp -d)
  local start=$SECONDS
  local pkgs=() p
  for p in "$@"; do pkgs+=("${p%%:*}"); done
  (cd "$here/gomod/$dir" && go build ${modfile:+-modfile="$modfile"} -trimpath -tags "${tags:-}" -ldflags "-s -w $ldflags" -o "$tmp/" "${pkgs[@]}")
  local b old
  for p in "$@"; do
    b=$(binary "$p")
    mv "$tmp/$(go_output "${p%%:*}")" "$bin/$b-$version"
    ln -sf "$b-$version" "$bin/$b"
    # The builds it replaces (another version or wrapper module) go: tens to hundreds of MB each.
    for old in "$bin/$b"-*; do
      if [ -f "$old" ] && [ ! -L "$old" ] && [ "$old" != "$bin/$b-$version" ]; then rm -f "$old"; fi
    done
  done
  rmdir "$tmp"
  log "built $name $version in $((SECONDS - start)) s"
}

k8s_ldflags() {
  local v=$1 major minor; major=$(echo "${v#v}" | cut -d. -f1); minor=$(echo "${v#v}" | cut -d. -f2)
  local f=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    f+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$f"
}

k8s_commands=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

# build_set NAME: one of the sets below (a set's binaries come from one `go build`).
build_set() {
  local w=$1 pv v
  case $w in
    # The control plane's and the node's commands in one `go build`, so that the packages they share
    # (most of k8s.io/kubernetes) compile once: cold on 2 cores, 281 s and 547 CPU-s, against 462 s
    # and 790 CPU-s as two builds side by side.
    kubernetes)
      build kube-apiserver "$KUBERNETES_VERSION" kubernetes "$(k8s_ldflags "$KUBERNETES_VERSION")" \
        "${k8s_commands[@]/#/k8s.io/kubernetes/cmd/}" ;;
    coredns) build coredns "$COREDNS_VERSION" coredns "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" modelops.dev/hack/coredns:coredns ;;
    etcd) build etcd "$ETCD_VERSION" etcd "" go.etcd.io/etcd/server/v3:etcd ;;
    # kwok only: the cluster runs it as a process of its own, and nothing here uses kwokctl.
    kwok) build kwok "$KWOK_VERSION" kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" sigs.k8s.io/kwok/cmd/kwok ;;
    training-operator)
      build training-operator "$TRAINING_OPERATOR_VERSION" training-operator "" \
        github.com/kubeflow/training-operator/cmd/training-operator.v1:training-operator ;;
    # Only the service discovery the cluster's scrape configuration uses (kubernetes_sd_configs; file
    # and http are always in): Prometheus's own build tags leave out the cloud providers' SDKs, which
    # were most of its 768 s cold build. The binaries' names say so (-k8s-sd).
    prometheus)
      v=${PROMETHEUS_VERSION#v0.}; v="3.${v:1:2}.${v##*.}"  # module v0.316.0 is Prometheus 3.16.0
      tags=remove_all_sd,enable_kubernetes_sd
      build prometheus "$PROMETHEUS_VERSION-k8s-sd" prometheus "-X github.com/prometheus/common/version.Version=$v" \
        github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool
      tags= ;;
    # Its version as metrics-server's Makefile sets it (client-go's version package).
    metrics-server)
      build metrics-server "$METRICS_SERVER_VERSION" metrics-server \
        "-X k8s.io/client-go/pkg/version.gitVersion=$METRICS_SERVER_VERSION -X k8s.io/client-go/pkg/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.buildDate=1970-01-01T00:00:00Z" \
        sigs.k8s.io/metrics-server/cmd/metrics-server ;;
    custom-metrics-adapter)
      build custom-metrics-adapter "" custom-metrics-adapter "" modelops.dev/hack/custom-metrics-adapter ;;
    # Its version as Kueue's Makefile sets it (pkg/version).
    kueue) build kueue "$KUEUE_VERSION" kueue "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" sigs.k8s.io/kueue/cmd/kueue ;;
    trainer)
      build trainer-controller-manager "$TRAINER_VERSION" trainer "" \
        github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager ;;
    # Its version as JobSet's Makefile sets it (pkg/version).
    jobset) build jobset "$JOBSET_VERSION" jobset "-X sigs.k8s.io/jobset/pkg/version.GitVersion=$JOBSET_VERSION" sigs.k8s.io/jobset:jobset ;;
    # Its version as Traefik's Makefile sets it (pkg/version). Without lego's ACME DNS-01 providers:
    # the local Gateway serves plain HTTP, and their cloud SDKs were a quarter of Traefik's compile
    # (cold, alone on 2 cores: 352 CPU-s against 459) and 216 MB of its modules. lego comes from a
    # copy of its module with hack/gomod/traefik/_lego's provider list (which refuses every name),
    # through a copy of the wrapper's go.mod that replaces it. The binary's name says so (-no-dns01).
    traefik)
      pv="$TRAEFIK_VERSION-no-dns01"
      if ! built "$pv" traefik github.com/traefik/traefik/v3/cmd/traefik; then
        local lego
        work=$(mktemp -d)  # not local: the trap runs after this function (build_set has a subshell of its own)
        trap 'rm -rf "$work"' EXIT
        lego=$(cd "$here/gomod/traefik" && go mod download github.com/go-acme/lego/v4 &&
          go list -m -f '{{.Dir}}' github.com/go-acme/lego/v4)
        cp -r "$lego" "$work/lego" && chmod -R u+w "$work/lego"
        cp "$here/gomod/traefik/_lego/zz_gen_dns_providers.go" "$work/lego/providers/dns/"
        cp "$here/gomod/traefik/go.mod" "$work/traefik.mod"; cp "$here/gomod/traefik/go.sum" "$work/traefik.sum"
        (cd "$here/gomod/traefik" && go mod edit -modfile="$work/traefik.mod" -replace "github.com/go-acme/lego/v4=$work/lego")
        modfile="$work/traefik.mod" build traefik "$pv" traefik \
          "-X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" github.com/traefik/traefik/v3/cmd/traefik
      fi ;;
    health)
      build modelops-health "" health "" modelops.dev/hack/health:modelops-health ;;
    # The Kubernetes version `helm template` and `helm lint` assume without --kube-version: that of
    # helm v3.19.0's client-go (v0.34), as helm's own Makefile sets it (unset, it is 1.20).
    # The file's name says so (-k8s1.34), so that a helm built before with 1.20 is rebuilt.
    helm) build helm "$HELM_VERSION-k8s1.34" helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=34 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=34" helm.sh/helm/v3/cmd/helm ;;
    *) log "unknown binary set: $w"; return 2 ;;
  esac
}

# build_chain A+B+...: sets one after the other, in one slot.
build_chain() {
  local s sets
  IFS=+ read -ra sets <<< "$1"
  for s in "${sets[@]}"; do build_set "$s"; done
}

# Two sets at a time (MODELOPS_GO_BUILD_JOBS): `go build` keeps both cores busy compiling, but each
# link is one core for up to a minute, and a module download is none; the heaviest sets come first.
# Sets joined by "+" build one after the other: their wrapper modules require the same versions of
# every module they share (tests/operator/test_go_builds.py), so the later ones find those packages
# in Go's build cache. Cold on 2 cores, alone against after the first: custom-metrics-adapter 144 s
# against 4 s and kwok 90 s against 16 s after metrics-server, modelops-health 159 s (301 CPU-s)
# against 72 s (134) after the three, JobSet 119 s against 21 s after Trainer, CoreDNS 101 s
# against 14 s after helm. Built side by side, each compiled them again.
want=("$@")
[ ${#want[@]} -gt 0 ] || want=(kubernetes traefik kueue prometheus metrics-server+custom-metrics-adapter+kwok+health trainer+jobset helm+coredns training-operator etcd)
jobs_max=${MODELOPS_GO_BUILD_JOBS:-2}
declare -A running=()
failed=()
reap() {
  local pid
  if wait -n -p pid; then :; else failed+=("${running[$pid]}"); fi
  unset "running[$pid]"
}
for w in "${want[@]}"; do
  while [ ${#running[@]} -ge "$jobs_max" ]; do reap; done
  build_chain "$w" &
  running[$!]=$w
done
while [ ${#running[@]} -gt 0 ]; do reap; done
if [ ${#failed[@]} -gt 0 ]; then log "failed: ${failed[*]}"; exit 1; fi
echo "$bin"
