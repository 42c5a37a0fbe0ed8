#!/usr/bin/env bash
# The quickstart: the whole life of a model on the local cluster, on real data.
#   1. installs what is missing (hack/setup.sh) and starts the local Kubernetes cluster
#   2. installs the operator with its Helm chart (charts/modelops), and runs `helm test`
#   3. puts scikit-learn's digit images on an artifact volume and applies examples/quickstart/:
#      a Dataset (prepared by a real Job), a TrainingRun (a 2-trial search, each trial a real
#      PyTorchJob training on CPU), a ModelDeployment (a real inference server)
#   4. classifies an image with curl through the served model (version 1)
#   5. trains a second model version and rolls it out as a canary under steady traffic:
#      10% → analysis → 50% → analysis → promoted, printing each step
#   6. classifies again with version 2, and shows `kubectl get modelops -A`
# Afterwards: eval "$(hack/cluster.py env)" gives you kubectl against it; hack/cluster.py down stops it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
started=$(date +%s)
say() { printf '\n\033[1m[%3ds] %s\033[0m\n' "$(($(date +%s) - started))" "$*"; }

say "setting up (venv, cluster binaries) and starting the local cluster"
hack/setup.sh
python3 hack/cluster.py up >/dev/null
eval "$(python3 hack/cluster.py env)"

say "installing the operator with Helm (charts/modelops), in namespace modelops-system"
# The images were built from the project's Dockerfiles and pushed to the cluster's registry by
# `hack/cluster.py up` (hack/images.py); the chart and the operator run them by digest. On the local
# cluster the operator runs on the real node (local-0), queries the cluster's Prometheus at the
# node's address, and mounts the artifact volume into the Jobs and servers it creates. Both
# namespaces enforce Pod Security's restricted profile.
image() { python3 hack/images.py refs | python3 -c "import json, sys; print(json.load(sys.stdin)['$1'])"; }
operator_image=$(image operator) trainer_image=$(image trainer) server_image=$(image server)
for ns in modelops-system default; do
  kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns" >/dev/null
  kubectl label namespace "$ns" --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
done
# --take-ownership: the CRDs may already be on this cluster (the tests apply crds/); the release
# takes them over instead of refusing to install.
helm upgrade --install modelops charts/modelops --namespace modelops-system --wait --timeout 5m --take-ownership \
  --set image.repository="${operator_image%@*}" --set image.digest="${operator_image#*@}" \
  --set settings.trainerImage="$trainer_image" --set settings.serverImage="$server_image" \
  --set settings.artifactPvc=modelops-artifacts \
  --set settings.prometheusUrl="http://10.250.0.1:${MODELOPS_PROMETHEUS_PORT:-19090}" \
  --set-json 'nodeSelector={"modelops.dev/pool":"local"}' \
  --set-json 'tolerations=[{"key":"modelops.dev/local","operator":"Exists","effect":"NoSchedule"}]'
helm test modelops --namespace modelops-system | grep -E "^(TEST SUITE|Phase)"
# The examples name the published images; here they run the ones just built.
local_images() { sed -e "s|ghcr.io/modelops/trainer:0.1.0|$trainer_image|g" -e "s|ghcr.io/modelops/server:0.1.0|$server_image|g" "$@"; }

say "the sample images, then the Dataset, TrainingRun and ModelDeployment (examples/quickstart/)"
local_images examples/quickstart/00-artifacts.yaml | kubectl apply -f -
kubectl wait --for=condition=Complete --timeout=300s job/digits-source
kubectl apply -f examples/quickstart/01-dataset.yaml -f examples/quickstart/02-trainingrun.yaml \
  -f examples/quickstart/03-modeldeployment.yaml

show_conditions() { kubectl get "$1" -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'; }
say "waiting for the Dataset (a Job cleans, splits and shards 1,797 images)"
kubectl wait --for=condition=Ready --timeout=600s dataset/digits || { show_conditions dataset/digits; exit 1; }
kubectl get dataset digits

say "waiting for the TrainingRun (2 trials of ResNet-18 on CPU, median stopping, best model registered)"
kubectl wait --for=jsonpath='{.status.phase}'=Succeeded --timeout=1200s trainingrun/digits-resnet \
  || { show_conditions trainingrun/digits-resnet; exit 1; }
kubectl get trainingrun digits-resnet -o jsonpath='{range .status.trials[*]}  {.name}  {.state}  {.parameters}  objective={.objective}{"\n"}{end}'
kubectl get trainingrun digits-resnet -o jsonpath='  registered model version {.status.model.version}: {.status.model.uri}{"\n"}'

say "waiting for the ModelDeployment to serve model version 1"
kubectl wait --for=condition=Ready --timeout=300s modeldeployment/digits || { show_conditions modeldeployment/digits; exit 1; }
classify() {
  # Through the Service, as a client in the cluster would: kube-proxy sends it to a ready server
  # (this machine reaches Service addresses; a pod being replaced no longer gets requests).
  local ip image
  ip=$(kubectl get service digits -o jsonpath='{.spec.clusterIP}')
  image=$(find "$repo/.cluster/volumes/default/modelops-artifacts/sources/digits/$1" -name '*.png' -print -quit)
  echo "\$ curl -F file=@${image#"$repo"/} http://$ip/v1/models/digits:classify"
  # Ready pods reach kube-proxy's rules a moment later: a refused connection is retried.
  curl -sS --retry 20 --retry-connrefused --retry-delay 1 -F "file=@$image" "http://$ip/v1/models/digits:classify"
  echo
}
classify 7

say "a second model version: more epochs, rolled out as a canary under steady traffic"
kubectl delete job digits-traffic --ignore-not-found >/dev/null
local_images examples/quickstart/extra/traffic.yaml | kubectl apply -f -
kubectl patch trainingrun digits-resnet --type=merge -p '{"spec":{"hyperparameters":{"epochs":4}}}'
kubectl wait --for=jsonpath='{.status.modelVersion}'=2 --timeout=1200s trainingrun/digits-resnet \
  || { show_conditions trainingrun/digits-resnet; exit 1; }
echo "  model version 2 registered; the ModelDeployment follows the latest version:"
last=""
deadline=$(($(date +%s) + 900))
while :; do
  line=$(kubectl get modeldeployment digits \
    -o jsonpath='{.status.phase} stable={.status.stableVersion} canary-weight={.status.canaryWeight}% step={.status.currentStep}: {.status.message}')
  [ "$line" != "$last" ] && echo "  $line" && last=$line
  case "$line" in "Healthy stable=digits-resnet:v2"*) break ;; Degraded*) show_conditions modeldeployment/digits; exit 1 ;; esac
  [ "$(date +%s)" -gt "$deadline" ] && { show_conditions modeldeployment/digits; exit 1; }
  sleep 2
done
kubectl get modeldeployment digits -o jsonpath='{range .status.analysis[*]}  step {.step} {.metric}={.value} {.result}{"\n"}{end}' | tail -4
classify 3

say "done: the whole lifecycle ran on this machine"
kubectl get modelops -A
echo
echo "Use the cluster:   eval \"\$(hack/cluster.py env)\"    then e.g. kubectl get mdep digits -w"
echo "Stop it:           hack/cluster.py down"
