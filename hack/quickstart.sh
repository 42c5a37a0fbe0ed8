#!/usr/bin/env bash
# The quickstart on the local cluster: installs what is missing, starts the local Kubernetes
# control plane, installs the CRDs, starts the operator, applies examples/quickstart/ and shows
# `kubectl get modelops -A` once the operator has reconciled every object.
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
kubectl apply -f examples/quickstart/
for obj in dataset/digits trainingrun/digits-resnet modeldeployment/digits; do
  kubectl wait --for=jsonpath='{.status.observedGeneration}'=1 --timeout=60s "$obj" >/dev/null
done
echo
kubectl get modelops -A
echo
echo "The local cluster is running. Use it with:   eval \"\$(hack/cluster.py env)\""
echo "Read the conditions:  kubectl get trainingrun digits-resnet -o jsonpath='{.status.conditions}'"
echo "Stop it and remove its state:   hack/cluster.py down"
