// Package dns stands in for lego's list of ACME DNS-01 challenge providers in modelops' build of
// Traefik (hack/build-binaries.sh copies lego's module and puts this file in place of its own
// providers/dns/zz_gen_dns_providers.go). The local cluster's Gateway serves plain HTTP and asks
// ACME for no certificate, and the ~150 providers' cloud SDKs were a quarter of Traefik's compile
// and 216 MB of its modules' download. The directory's leading underscore keeps it out of the
// wrapper module's own packages.
package dns

import (
	"fmt"

	"github.com/go-acme/lego/v4/challenge"
)

// NewDNSChallengeProviderByName refuses every name: this build has no DNS-01 provider.
func NewDNSChallengeProviderByName(name string) (challenge.Provider, error) {
	return nil, fmt.Errorf("unrecognized DNS provider: %s (modelops' build of Traefik has no DNS-01 providers)", name)
}
