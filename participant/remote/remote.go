// Package remote is the coordinator's side of a participant that is a
// separate service: a participant.Resource whose prepared branches are
// finished by calling the service's Participant gRPC API, and the gRPC
// metadata that carries a global transaction from a client to the services
// it calls.
package remote

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// ErrNoBegin reports a Begin on a remote resource: a remote participant
// prepares its own branches and joins them to the transaction.
var ErrNoBegin = errors.New("remote: a remote participant starts its own branches; it registers them prepared")

// Resource is a remote participant as the coordinator sees it. Its address
// may change while it runs (a restarted service announces its new one).
type Resource struct {
	name string
	opts []grpc.DialOption

	mu     sync.Mutex
	addr   string
	conn   *grpc.ClientConn
	client txcoordv1.ParticipantClient
	closed bool

	commits committer
}

var _ participant.Resource = (*Resource)(nil)

// New returns the remote participant name served at addr (host:port). The
// connection is made on first use; opts are passed to grpc.NewClient (give
// transport credentials: TLS, or insecure.NewCredentials() on a trusted
// network).
func New(name, addr string, opts ...grpc.DialOption) (*Resource, error) {
	if err := ids.ValidateName("participant name", name); err != nil {
		return nil, err
	}
	// Reconnect soon after a participant comes back (gRPC's default waits
	// up to two minutes); the caller's options come after and win.
	def := grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
		MinConnectTimeout: 5 * time.Second,
	})
	r := &Resource{name: name, opts: append([]grpc.DialOption{def}, opts...)}
	if err := r.SetAddress(addr); err != nil {
		return nil, err
	}
	return r, nil
}

// Name is the participant's name.
func (r *Resource) Name() string { return r.name }

// Address is where the participant is called now.
func (r *Resource) Address() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addr
}

// SetAddress points the resource at a new address.
func (r *Resource) SetAddress(addr string) error {
	if err := ValidateAddress(addr); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("remote: resource closed")
	}
	if addr == r.addr {
		// The participant says it is there: if the connection is waiting
		// out a backoff, try it now. Only then: ResetConnectBackoff reads
		// the channel's subchannels unlocked, which races with the
		// channel creating them while it connects.
		if r.conn != nil && r.conn.GetState() == connectivity.TransientFailure {
			r.conn.ResetConnectBackoff()
		}
		return nil
	}
	conn, err := grpc.NewClient(addr, r.opts...)
	if err != nil {
		return fmt.Errorf("remote: participant %s at %s: %w", r.name, addr, err)
	}
	// Calls in flight on the old connection end with an error; phase two
	// and recovery retry them at the new address.
	if r.conn != nil {
		_ = r.conn.Close()
	}
	r.addr, r.conn, r.client = addr, conn, txcoordv1.NewParticipantClient(conn)
	return nil
}

// ValidateAddress checks a host:port a participant gives for itself.
func ValidateAddress(addr string) error {
	if addr == "" || len(addr) > 255 || strings.ContainsAny(addr, " \t\r\n/") || !strings.Contains(addr, ":") {
		return fmt.Errorf("remote: address %q is not host:port", addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" {
		return fmt.Errorf("remote: address %q is not host:port", addr)
	}
	// A gRPC target scheme (unix:, unix-abstract:, dns:, passthrough:)
	// would make the coordinator dial where the caller chooses.
	if strings.Contains(host, ":") && net.ParseIP(host) == nil {
		return fmt.Errorf("remote: address %q is not host:port (target schemes are refused)", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("remote: address %q: port %q is not a number", addr, port)
	}
	return nil
}

func (r *Resource) stub() (txcoordv1.ParticipantClient, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errors.New("remote: resource closed")
	}
	return r.client, nil
}

// Close closes the connection.
func (r *Resource) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	if r.conn == nil {
		return nil
	}
	return r.conn.Close()
}

// Begin is not supported: see ErrNoBegin.
func (r *Resource) Begin(context.Context, ids.GID) (participant.Branch, error) {
	return nil, ErrNoBegin
}

// Commit commits the prepared branch gid at the participant. Commits
// asked for while another is in flight to the same participant wait for it
// and then go together in one CommitBatch call (see committer).
func (r *Resource) Commit(ctx context.Context, gid ids.GID) error {
	return r.commits.commit(ctx, r, gid)
}

// commitOne commits gid in a call of its own.
func (r *Resource) commitOne(ctx context.Context, gid ids.GID) error {
	c, err := r.stub()
	if err != nil {
		return err
	}
	_, err = c.Commit(ctx, &txcoordv1.CommitBranchRequest{Gid: gid.String()})
	return r.mapErr("commit", gid, err)
}

// Rollback rolls back the prepared branch gid at the participant.
func (r *Resource) Rollback(ctx context.Context, gid ids.GID) error {
	c, err := r.stub()
	if err != nil {
		return err
	}
	_, err = c.Rollback(ctx, &txcoordv1.RollbackBranchRequest{Gid: gid.String()})
	return r.mapErr("rollback", gid, err)
}

// Prepared lists the participant's prepared branches. Identifiers that are
// not gids are returned with a zero GID (foreign).
func (r *Resource) Prepared(ctx context.Context) ([]participant.Prepared, error) {
	c, err := r.stub()
	if err != nil {
		return nil, err
	}
	resp, err := c.ListPrepared(ctx, &txcoordv1.ListPreparedRequest{})
	if err != nil {
		return nil, fmt.Errorf("remote: %s: list prepared: %w", r.name, err)
	}
	out := make([]participant.Prepared, 0, len(resp.GetBranches()))
	for _, b := range resp.GetBranches() {
		p := participant.Prepared{Raw: b.GetRaw(), Owner: b.GetOwner(), Database: b.GetDatabase()}
		if b.GetPreparedAt() != nil {
			p.Since = b.GetPreparedAt().AsTime()
		}
		if g, err := ids.ParseGID(p.Raw); err == nil {
			p.GID = g
		}
		out = append(out, p)
	}
	return out, nil
}

// mapErr turns a participant's status into the participant package's
// errors. A status the Participant API does not define is an unknown
// outcome for a commit (the request may have been applied) and a plain
// error otherwise.
func (r *Resource) mapErr(op string, gid ids.GID, err error) error {
	if err == nil {
		return nil
	}
	return r.mapErrAt(fmt.Sprintf("remote: %s %s at %s (%s)", op, gid, r.name, r.Address()), err)
}

// mapErrAt is mapErr with the error's place given.
func (r *Resource) mapErrAt(where string, err error) error {
	st := status.New(status.Code(err), bounded(status.Convert(err).Message()))
	switch st.Code() {
	case codes.NotFound:
		return fmt.Errorf("%s: %w: %s", where, participant.ErrUnknownBranch, st.Message())
	case codes.Aborted:
		return fmt.Errorf("%s: %w: %s", where, participant.ErrBusy, st.Message())
	case codes.InvalidArgument:
		return fmt.Errorf("%s: %w: %s", where, ids.ErrBadGID, st.Message())
	case codes.Unavailable, codes.FailedPrecondition, codes.ResourceExhausted:
		// Not sent, or refused before acting: safe to retry.
		return fmt.Errorf("%s: %s: %s", where, st.Code(), st.Message())
	}
	// DeadlineExceeded, Canceled, Unknown, Internal, anything else: the
	// request may have been carried out.
	return fmt.Errorf("%s: %w: %s: %s", where, participant.ErrOutcomeUnknown, st.Code(), st.Message())
}

// maxMessage bounds what a participant's error message may add to the
// coordinator's memory, logs and operators' screens.
const maxMessage = 1024

// bounded keeps at most maxMessage bytes of a participant's message, with
// control characters (terminal escapes) replaced.
func bounded(msg string) string {
	if len(msg) > maxMessage {
		msg = msg[:maxMessage] + "...(truncated)"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(msg, "?"))
}
