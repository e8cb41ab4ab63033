package remote

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/txcoord/txcoord/ids"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// ReportMetadataKey is the gRPC metadata key with which a client that
// collects reported branches names the coordinator instance that began the
// transaction and the method it calls: "<owner> <log id> <epoch>
// <method>". A participant serving that very instance, answering that very
// method, reports its prepared branch in its reply instead of registering
// it with the coordinator: one round trip less per branch. Only the client
// that began the transaction sends it; a service passing the transaction
// on to another service does not, so that service registers its branch
// itself, and a service that forwards its incoming metadata to another
// method leaves that method's service registering too.
const ReportMetadataKey = "txcoord-report"

// FormatReport is the value of ReportMetadataKey.
func FormatReport(instance, method string) string { return instance + " " + method }

// ParseReport parses a value of ReportMetadataKey.
func ParseReport(v string) (instance, method string, err error) {
	i := strings.LastIndexByte(v, ' ')
	if i < 0 || !strings.HasPrefix(v[i+1:], "/") {
		return "", "", fmt.Errorf("remote: malformed %s %q: want \"<owner> <log id> <epoch> <method>\"", ReportMetadataKey, v)
	}
	if _, _, _, err := ParseInstance(v[:i]); err != nil {
		return "", "", err
	}
	return v[:i], v[i+1:], nil
}

// ReportProof is the proof a reported branch carries: HMAC-SHA256 of its
// gid under the participant's report key, the first 16 bytes.
func ReportProof(key []byte, gid string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(gid))
	return m.Sum(nil)[:16]
}

// ErrReportedLate fails a call whose reply reports a branch after the
// transaction's Commit or Rollback was sent: the branch is not the
// transaction's, and is rolled back.
var ErrReportedLate = errors.New("remote: the call's branch was reported after the transaction's Commit or Rollback was sent; it is not part of the transaction and will be rolled back")

// BranchTrailerKey is the trailer in which a participant reports a
// prepared branch: a txcoordv1.ReportedBranch in binary, one value per
// branch.
const BranchTrailerKey = "txcoord-branch-bin"

// maxReported bounds the branches one transaction may collect (the
// server's default branch quota); more fails the call.
const maxReported = 256

// Reports collects the branches that the services of one transaction
// report in their replies, for Commit and Rollback to carry.
type Reports struct {
	mu     sync.Mutex
	list   []*txcoordv1.ReportedBranch
	sealed bool
}

// Seal returns the branches reported so far and ends the collection: a
// reply that reports a branch later fails its call with ErrReportedLate,
// and later calls do not ask for reports (their services register, and
// are refused). Commit and Rollback seal before they are sent, so that
// every branch a call reported is in what they carry, or its call failed.
func (r *Reports) Seal() []*txcoordv1.ReportedBranch {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sealed = true
	return append([]*txcoordv1.ReportedBranch(nil), r.list...)
}

func (r *Reports) open() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.sealed
}

// add parses the reported branches of one reply of a call in tx. A value
// that is not a branch of tx is an error; the branches before it are kept.
func (r *Reports) add(tx Tx, trailer metadata.MD) error {
	vals := trailer.Get(BranchTrailerKey)
	if len(vals) == 0 {
		return nil
	}
	if len(vals) > maxReported {
		return fmt.Errorf("%d reported branches in one reply, more than %d", len(vals), maxReported)
	}
	gtrid := tx.GTRID() + "."
	var errs []error
	var ok []*txcoordv1.ReportedBranch
	for _, v := range vals {
		b := &txcoordv1.ReportedBranch{}
		if err := proto.Unmarshal([]byte(v), b); err != nil {
			errs = append(errs, fmt.Errorf("reported branch: %v", err))
			continue
		}
		if !strings.HasPrefix(b.GetGid(), gtrid) {
			errs = append(errs, fmt.Errorf("reported branch %q is not a branch of transaction %s", b.GetGid(), tx.GTRID()))
			continue
		}
		if _, err := ids.ParseGID(b.GetGid()); err != nil {
			errs = append(errs, fmt.Errorf("reported branch: %w", err))
			continue
		}
		if err := ids.ValidateName("participant name", b.GetParticipant()); err != nil {
			errs = append(errs, fmt.Errorf("reported branch %s: %w", b.GetGid(), err))
			continue
		}
		ok = append(ok, b)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remote: malformed reported branch: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.sealed:
		return ErrReportedLate
	case len(r.list)+len(ok) > maxReported:
		return fmt.Errorf("remote: more than %d branches reported in one transaction", maxReported)
	}
	r.list = append(r.list, ok...)
	return nil
}

// ReportBranch is the trailer that reports branch b.
func ReportBranch(b *txcoordv1.ReportedBranch) (metadata.MD, error) {
	v, err := proto.Marshal(b)
	if err != nil {
		return nil, err
	}
	return metadata.Pairs(BranchTrailerKey, string(v)), nil
}

// invokeReporting makes a call in tx that asks the service to report its
// branches, and collects them.
func invokeReporting(ctx context.Context, tx Tx, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) error {
	if !tx.Reports.open() {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, ReportMetadataKey, FormatReport(tx.Report, method))
	var trailer metadata.MD
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Trailer(&trailer))...)
	if rerr := tx.Reports.add(tx, trailer); rerr != nil {
		// A branch the transaction will not carry (malformed, or too
		// late): the call fails, and what it prepared is rolled back as
		// a branch the transaction never had.
		return errors.Join(err, fmt.Errorf("%s: %w", method, rerr))
	}
	return err
}
