//go:build tools

// Package tools records the Traefik command this module builds, so `go mod tidy` keeps it.
package tools

import _ "github.com/traefik/traefik/v3/cmd/traefik"
