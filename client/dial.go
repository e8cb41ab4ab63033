package client

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/txcoord/txcoord/participant/remote"
)

// DialCoordinators connects to whichever of the coordinators at addrs
// (host:port each) serves: with coordinators that fail over through etcd
// (txcoord serve --etcd-endpoints, --standby), only the primary listens,
// so the connection lands on it, and after a failover it moves to the
// process that serves then. Give every address of one coordinator id, in
// any order; opts are the usual dial options (transport credentials). The
// connection suits both a Client and an sdk.Config.Coordinator.
func DialCoordinators(addrs []string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if len(addrs) == 0 {
		return nil, errors.New("client: no coordinator address")
	}
	state := resolver.State{}
	for _, a := range addrs {
		if err := remote.ValidateAddress(a); err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
		// Each address is verified under its own host name (TLS), not
		// the resolver's made-up target.
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a, ServerName: host})
	}
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	r := manual.NewBuilderWithScheme("txcoord-" + hex.EncodeToString(b))
	r.InitialState(state)
	// pick_first (gRPC's default) tries the addresses in order until one
	// accepts: a standby does not listen.
	return grpc.NewClient(r.Scheme()+":///coordinators", append([]grpc.DialOption{grpc.WithResolvers(r)}, opts...)...)
}
