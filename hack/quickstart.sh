#!/usr/bin/env bash
# The quickstart on the local cluster: installs what is missing, starts the local Kubernetes
# cluster, installs the CRDs, starts the operator, puts sample images on an artifact volume,
# applies examples/quickstart/, waits until the Dataset is prepared by a real Job and the
# TrainingRun has trained (two real PyTorchJobs on the local node) and registered an ONNX model,
# and the ModelDeployment serves it (a real inference server), classifies one image, and shows
# `kubectl get modelops -A`.
# Afterwards: eval "$(hack/cluster.py env)" gives you kubectl against it; hack/cluster.py down stops it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
hack/setup.sh
python3 hack/cluster.py up >/dev/null
eval "$(python3 hack/cluster.py env)"
kubectl apply --server-side --force-conflicts --field-manager=modelops-quickstart -f crds/
kubectl wait --for=condition=Established --timeout=60s -f crds/ >/dev/null
python3 hack/cluster.py operator
kubectl apply -f examples/quickstart/00-artifacts.yaml
kubectl wait --for=condition=Complete --timeout=300s job/digits-source
kubectl apply -f examples/quickstart/
echo "waiting for the Dataset to be prepared (a real Job on the local node)..."
kubectl wait --for=condition=Ready --timeout=600s dataset/digits || {
  kubectl get dataset digits -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
  exit 1
}
echo "waiting for the TrainingRun: a 2-trial search, each trial a PyTorchJob training on the local node..."
kubectl wait --for=jsonpath='{.status.phase}'=Succeeded --timeout=1200s trainingrun/digits-resnet || {
  kubectl get trainingrun digits-resnet -o jsonpath='{.status.progress}{"\n"}{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
  exit 1
}
kubectl get trainingrun digits-resnet -o jsonpath='{range .status.trials[*]}{.name}  {.state}  {.parameters}  objective={.objective}{"\n"}{end}'
kubectl get trainingrun digits-resnet -o jsonpath='registered model version {.status.model.version}: {.status.model.uri} ({.status.model.digest}){"\n"}'
echo "waiting for the ModelDeployment: the inference server on the local node, serving model version 1..."
kubectl wait --for=condition=Ready --timeout=300s modeldeployment/digits || {
  kubectl get modeldeployment digits -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
  exit 1
}
# One request to a server pod (pod IPs are reachable from this machine), with a real digit image.
pod_ip=$(kubectl get pods -l modelops.dev/modeldeployment=digits,modelops.dev/track=stable -o jsonpath='{.items[0].status.podIP}')
image=$(find .cluster/nodeagent/volumes/default/modelops-artifacts/sources/digits/7 -name '*.png' -print -quit)
echo "classifying $image:"
.venv/bin/python -c 'import sys, requests; print(requests.post(sys.argv[1], files={"file": open(sys.argv[2], "rb")}, timeout=30).text)' \
  "http://$pod_ip:8080/v1/models/digits:classify" "$image"
echo
kubectl get modelops -A
echo
echo "The local cluster is running. Use it with:   eval \"\$(hack/cluster.py env)\""
echo "Read the conditions:  kubectl get trainingrun digits-resnet -o jsonpath='{.status.conditions}'"
echo "Stop it and remove its state:   hack/cluster.py down"
