//go:build tools

// Package tools records the JobSet command this module builds, so `go mod tidy` keeps it.
package tools

import _ "sigs.k8s.io/jobset"
