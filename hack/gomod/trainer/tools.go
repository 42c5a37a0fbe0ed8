//go:build tools

// Package tools records the Trainer v2 command this module builds, so `go mod tidy` keeps it.
package tools

import _ "github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager"
