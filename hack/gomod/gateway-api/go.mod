// Wrapper module: nothing to build; its module holds the Gateway API CRDs
// (config/crd/standard), which hack/cluster.py installs.
module modelops.dev/hack/gateway-api

go 1.26.0

require sigs.k8s.io/gateway-api v1.3.0
