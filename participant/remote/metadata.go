package remote

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/txcoord/txcoord/ids"
)

// MetadataKey is the gRPC metadata key that carries a global transaction:
// its gtrid, <prefix>.<coordinator id>.<txid>.
const MetadataKey = "txcoord-gtrid"

// HolderMetadataKey is the gRPC metadata key that carries the name of the
// transaction's decision holder, when it has one: a participant names it in
// its branch's gid (ids.MarkHolder), so that recovery finds the decision.
const HolderMetadataKey = "txcoord-holder"

// Tx identifies a global transaction to the services it calls.
type Tx struct {
	Prefix      string
	Coordinator string
	ID          ids.TxID
	// Holder is the transaction's decision holder, if it has one.
	Holder string
	// Report is the coordinator instance that began the transaction
	// (FormatInstance), under which a participant reports its branch
	// instead of registering it (ReportMetadataKey). In a client, it is
	// sent only with Reports; in a service, it is what the caller sent.
	Report string
	// ReportMethod, in a service, is the method the caller asked reports
	// of: a participant reports only in that method's reply.
	ReportMethod string
	// Reports collects the branches services report in their replies. Only
	// the client that began the transaction has it: nil in a service, so a
	// transaction passed on is not reported to someone who would drop it.
	Reports *Reports
}

// GTRID is the transaction part of the transaction's gids.
func (t Tx) GTRID() string {
	return t.Prefix + "." + t.Coordinator + "." + t.ID.String()
}

// GID is the gid of the transaction's branch named branch.
func (t Tx) GID(branch string) (ids.GID, error) {
	return ids.NewGID(t.Prefix, t.Coordinator, t.ID, branch)
}

// ParseGTRID parses and validates <prefix>.<coordinator id>.<txid>.
func ParseGTRID(s string) (Tx, error) {
	if strings.Count(s, ".") != 2 {
		return Tx{}, fmt.Errorf("%w: gtrid %q: want <prefix>.<coordinator>.<txid>", ids.ErrBadGID, s)
	}
	g, err := ids.ParseGID(s + ".0")
	if err != nil {
		return Tx{}, err
	}
	return Tx{Prefix: g.Prefix, Coordinator: g.Coordinator, ID: g.TxID}, nil
}

type ctxKey struct{}

// NewContext returns ctx carrying tx: calls made with it through a client
// with UnaryClientInterceptor join tx.
func NewContext(ctx context.Context, tx Tx) context.Context {
	return context.WithValue(ctx, ctxKey{}, tx)
}

// FromContext returns the transaction ctx carries, put there by NewContext
// or, in a service, by UnaryServerInterceptor.
func FromContext(ctx context.Context) (Tx, bool) {
	tx, ok := ctx.Value(ctxKey{}).(Tx)
	return tx, ok
}

// UnaryClientInterceptor sends the transaction in ctx (if any) to the
// called service as gRPC metadata. With the client's Reports, it asks the
// service to report its prepared branches in its reply, and collects them.
func UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if tx, ok := FromContext(ctx); ok {
			ctx = metadata.AppendToOutgoingContext(ctx, MetadataKey, tx.GTRID())
			if tx.Holder != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, HolderMetadataKey, tx.Holder)
			}
			if tx.Reports != nil && tx.Report != "" {
				return invokeReporting(ctx, tx, method, req, reply, cc, invoker, opts)
			}
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// FromIncoming reads the transaction from a call's incoming metadata. ok is
// false when the call carries none; a malformed one is an error.
func FromIncoming(ctx context.Context) (tx Tx, ok bool, err error) {
	vals := metadata.ValueFromIncomingContext(ctx, MetadataKey)
	switch len(vals) {
	case 0:
		return Tx{}, false, nil
	case 1:
	default:
		return Tx{}, false, fmt.Errorf("%w: %d %s values in one call", ids.ErrBadGID, len(vals), MetadataKey)
	}
	tx, err = ParseGTRID(vals[0])
	if err != nil {
		return Tx{}, false, err
	}
	switch h := metadata.ValueFromIncomingContext(ctx, HolderMetadataKey); len(h) {
	case 0:
	case 1:
		if err := ids.ValidateHolderName(h[0]); err != nil {
			return Tx{}, false, err
		}
		tx.Holder = h[0]
	default:
		return Tx{}, false, fmt.Errorf("%w: %d %s values in one call", ids.ErrBadGID, len(h), HolderMetadataKey)
	}
	switch r := metadata.ValueFromIncomingContext(ctx, ReportMetadataKey); len(r) {
	case 0:
	case 1:
		if tx.Report, tx.ReportMethod, err = ParseReport(r[0]); err != nil {
			return Tx{}, false, err
		}
	default:
		return Tx{}, false, fmt.Errorf("remote: %d %s values in one call", len(r), ReportMetadataKey)
	}
	return tx, true, nil
}

// InstanceMetadataKey is the gRPC metadata key with which a coordinator
// names itself on its calls to a participant: "<owner> <log id> <epoch>"
// (see Instance in the API). A participant that serves another instance
// with the same owner refuses the call.
const InstanceMetadataKey = "txcoord-instance"

// FormatInstance is the value of InstanceMetadataKey.
func FormatInstance(owner, logID string, epoch uint64) string {
	return fmt.Sprintf("%s %s %d", owner, logID, epoch)
}

// ParseInstance parses a value of InstanceMetadataKey.
func ParseInstance(v string) (owner, logID string, epoch uint64, err error) {
	parts := strings.Fields(v)
	if len(parts) != 3 || len(v) > 200 {
		return "", "", 0, fmt.Errorf("remote: malformed %s %q: want \"<owner> <log id> <epoch>\"", InstanceMetadataKey, v)
	}
	epoch, err = strconv.ParseUint(parts[2], 10, 64)
	if err != nil {
		return "", "", 0, fmt.Errorf("remote: malformed %s %q: epoch: %v", InstanceMetadataKey, v, err)
	}
	return parts[0], parts[1], epoch, nil
}

// InstanceInterceptor adds the coordinator's instance (as Instance
// returns it) to every call a coordinator makes to a participant. It adds
// nothing for a log without an id.
func InstanceInterceptor(instance func() (owner, logID string, epoch uint64)) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if owner, logID, epoch := instance(); logID != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, InstanceMetadataKey, FormatInstance(owner, logID, epoch))
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}
