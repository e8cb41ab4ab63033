package remote

import (
	"context"
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
// transaction (FormatInstance). A participant serving that very instance
// reports its prepared branch in its reply instead of registering it with
// the coordinator: one round trip less per branch. Only the client that
// began the transaction sends it; a service passing the transaction on to
// another service does not, so that service registers its branch itself.
const ReportMetadataKey = "txcoord-report"

// BranchTrailerKey is the trailer in which a participant reports a
// prepared branch: a txcoordv1.ReportedBranch in binary, one value per
// branch.
const BranchTrailerKey = "txcoord-branch-bin"

// maxReported bounds the branches one call may report; more is a
// malformed reply.
const maxReported = 256

// Reports collects the branches that the services of one transaction
// report in their replies, for Commit and Rollback to carry.
type Reports struct {
	mu   sync.Mutex
	list []*txcoordv1.ReportedBranch
}

// List returns the branches reported so far.
func (r *Reports) List() []*txcoordv1.ReportedBranch {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*txcoordv1.ReportedBranch(nil), r.list...)
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
		r.mu.Lock()
		r.list = append(r.list, b)
		r.mu.Unlock()
	}
	return errors.Join(errs...)
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
	ctx = metadata.AppendToOutgoingContext(ctx, ReportMetadataKey, tx.Report)
	var trailer metadata.MD
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Trailer(&trailer))...)
	if rerr := tx.Reports.add(tx, trailer); rerr != nil {
		// The service answered something that is not a branch of this
		// transaction: the call fails, and what it prepared is rolled
		// back by recovery, as a branch the transaction never had.
		return errors.Join(err, fmt.Errorf("remote: %s answered a malformed reported branch: %w", method, rerr))
	}
	return err
}
