//go:build tools

// Package tools records the training-operator command this module builds, so `go mod tidy` keeps it.
package tools

import _ "github.com/kubeflow/training-operator/cmd/training-operator.v1"
