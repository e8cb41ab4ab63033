// Package proctest helps tests that run the project's programs as separate
// processes: waiting for a gRPC server to serve, and reading the end of a
// process's log.
package proctest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// ErrExited is returned by WaitServing when the process exited first.
var ErrExited = errors.New("the process exited before it was serving")

// WaitServing polls the gRPC health service at addr (plaintext, unless opts
// give credentials) until it answers SERVING, ctx ends, or exited (if not
// nil) is closed. A ctx error carries the last answer's error.
func WaitServing(ctx context.Context, addr string, exited <-chan struct{}, opts ...grpc.DialOption) error {
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	return WaitServingConn(ctx, conn, exited)
}

// WaitServingConn is WaitServing on a connection the caller made (for
// example to whichever of several addresses serves).
func WaitServingConn(ctx context.Context, conn *grpc.ClientConn, exited <-chan struct{}) error {
	hc := healthpb.NewHealthClient(conn)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := hc.Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("health status %v", resp.GetStatus())
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-exited:
			t.Stop()
			return ErrExited
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w: %v", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// Tail returns the last n lines of the file at path, or the error reading
// it as text.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
