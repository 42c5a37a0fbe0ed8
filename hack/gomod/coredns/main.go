// CoreDNS for the local cluster, built with only the plugins its Corefile uses (hack/cluster.py):
// bind, errors, health, ready, kubernetes (Service and pod names), forward (everything else to the
// host's resolver), cache, loop, reload. The full plugin set (core/plugin) would pull in every
// cloud's SDK for nothing.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() {
	_ = dnsserver.Directives
	coremain.Run()
}
