package coordinator

import (
	"context"
	"testing"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/wal"
)

// nopResource answers every call at once: what is left of a benchmark on
// it is the coordinator's own cost.
type nopResource struct{ name string }

func (r nopResource) Name() string { return r.name }
func (r nopResource) Begin(ctx context.Context, gid ids.GID) (participant.Branch, error) {
	return nopBranch{r: r, gid: gid}, nil
}
func (r nopResource) Commit(context.Context, ids.GID) error   { return nil }
func (r nopResource) Rollback(context.Context, ids.GID) error { return nil }
func (r nopResource) Prepared(context.Context) ([]participant.Prepared, error) {
	return nil, nil
}

type nopBranch struct {
	r   nopResource
	gid ids.GID
}

func (b nopBranch) GID() ids.GID                   { return b.gid }
func (b nopBranch) Resource() participant.Resource { return b.r }
func (b nopBranch) Prepare(context.Context) (participant.Vote, error) {
	return participant.VoteYes, nil
}
func (b nopBranch) CommitOnePhase(context.Context) error { return nil }
func (b nopBranch) Abort(context.Context) error          { return nil }

// BenchmarkCommitTwoBranches is the coordinator's own CPU and allocations
// per two-branch commit: resources that answer at once, an in-memory log.
func BenchmarkCommitTwoBranches(b *testing.B) {
	res := []participant.Resource{nopResource{"a"}, nopResource{"b"}}
	c, err := New(context.Background(), Config{ID: "bench", Log: wal.NewMem(), Resources: res, RecoveryInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			err := c.Do(ctx, func(ctx context.Context, tx *Tx) error {
				for _, r := range res {
					if _, err := tx.Enlist(ctx, r); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}
