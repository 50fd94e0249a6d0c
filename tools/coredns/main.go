// Command coredns is upstream CoreDNS (github.com/coredns/coredns) with only the plugins
// the single-node cluster's Corefile uses (scripts/node-up.sh): the full plugin set would
// also compile the AWS, Azure and Google Cloud SDKs for route53/azure/clouddns. No
// forward plugin: the cluster answers for cluster.local only and sends no query off the
// machine.
// Plugins register themselves in their init; the Corefile decides the order they run in
// (core/dnsserver's directive list, which names every plugin, built in or not).
package main

import (
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"

	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
