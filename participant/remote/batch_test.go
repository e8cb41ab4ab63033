package remote_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// batcher is a participant whose first Commit waits for release, and which
// answers each gid of a batch with the code in codes (OK if absent), or
// with junk answers when garbage is set.
type batcher struct {
	txcoordv1.UnimplementedParticipantServer
	noBatch bool // answer CommitBatch with UNIMPLEMENTED
	garbage bool

	entered chan struct{}
	release chan struct{}

	mu      sync.Mutex
	codes   map[string]codes.Code
	singles []string
	batches [][]string
}

func newBatcher() *batcher {
	return &batcher{entered: make(chan struct{}, 1), release: make(chan struct{}), codes: map[string]codes.Code{}}
}

func (s *batcher) Commit(ctx context.Context, req *txcoordv1.CommitBranchRequest) (*txcoordv1.CommitBranchResponse, error) {
	s.mu.Lock()
	first := len(s.singles) == 0 && len(s.batches) == 0
	s.singles = append(s.singles, req.GetGid())
	code := s.codes[req.GetGid()]
	s.mu.Unlock()
	if first {
		s.entered <- struct{}{}
		<-s.release
	}
	if code != codes.OK {
		return nil, status.Error(code, "from the batcher")
	}
	return &txcoordv1.CommitBranchResponse{}, nil
}

func (s *batcher) CommitBatch(ctx context.Context, req *txcoordv1.CommitBatchRequest) (*txcoordv1.CommitBatchResponse, error) {
	if s.noBatch {
		return nil, status.Error(codes.Unimplemented, "no CommitBatch here")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches = append(s.batches, req.GetGids())
	resp := &txcoordv1.CommitBatchResponse{}
	for _, g := range req.GetGids() {
		resp.Results = append(resp.Results, &txcoordv1.CommitResult{Gid: g, Code: uint32(s.codes[g]), Message: "from the batcher"})
	}
	if s.garbage {
		resp.Results = resp.Results[1:]
	}
	return resp, nil
}

func serveBatcher(t *testing.T, s *batcher) *remote.Resource {
	t.Helper()
	lis := listen(t)
	gs := grpc.NewServer()
	txcoordv1.RegisterParticipantServer(gs, s)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	r, err := remote.New("pay", lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func newGIDs(t *testing.T, n int) []ids.GID {
	t.Helper()
	out := make([]ids.GID, n)
	for i := range out {
		id, err := ids.NewTxID()
		if err != nil {
			t.Fatal(err)
		}
		if out[i], err = ids.NewGID("txc", "c1", id, "pay-1"); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// commitAll holds the participant's first Commit (gs[0]) until the other
// commits are queued behind it, then releases it; it returns each commit's
// error. Commits whose ctx is in cancelled end before the release.
func commitAll(t *testing.T, r *remote.Resource, s *batcher, gs []ids.GID, cancelled map[int]bool) []error {
	t.Helper()
	errs := make([]error, len(gs))
	var wg sync.WaitGroup
	wg.Go(func() { errs[0] = r.Commit(context.Background(), gs[0]) })
	<-s.entered
	var gave sync.WaitGroup
	for i := 1; i < len(gs); i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if cancelled[i] {
			gave.Add(1)
			ctx, cancel = context.WithCancel(ctx)
			defer cancel()
			time.AfterFunc(50*time.Millisecond, func() { cancel(); gave.Done() })
		}
		wg.Go(func() { errs[i] = r.Commit(ctx, gs[i]) })
	}
	// Every commit queued (there is no other signal than time), and the
	// given-up ones gone, before the first call returns.
	time.Sleep(200 * time.Millisecond)
	gave.Wait()
	close(s.release)
	wg.Wait()
	return errs
}

func TestCommitsQueuedBehindACallGoTogether(t *testing.T) {
	s := newBatcher()
	r := serveBatcher(t, s)
	gs := newGIDs(t, 6)
	s.codes[gs[2].String()] = codes.NotFound
	s.codes[gs[3].String()] = codes.Unknown
	errs := commitAll(t, r, s, gs, map[int]bool{5: true})

	if len(s.singles) != 1 || s.singles[0] != gs[0].String() {
		t.Fatalf("single calls %v, want only the first commit", s.singles)
	}
	if len(s.batches) != 1 || len(s.batches[0]) != 4 {
		t.Fatalf("batches %v, want one of the 4 commits still wanted", s.batches)
	}
	for _, g := range s.batches[0] {
		if g == gs[5].String() {
			t.Fatal("a commit whose caller gave up while it was queued was sent")
		}
	}
	for i, err := range errs {
		switch i {
		case 0, 1, 4:
			if err != nil {
				t.Errorf("commit %d: %v", i, err)
			}
		case 2:
			if !errors.Is(err, participant.ErrUnknownBranch) || errors.Is(err, participant.ErrOutcomeUnknown) {
				t.Errorf("commit %d (NOT_FOUND): %v", i, err)
			}
		case 3, 5:
			// UNKNOWN from the participant; a caller that gave up cannot
			// tell what happened either.
			if !errors.Is(err, participant.ErrOutcomeUnknown) {
				t.Errorf("commit %d: %v, want outcome unknown", i, err)
			}
		}
	}

	// Nothing in flight: the next commit is a call of its own at once.
	g := newGIDs(t, 1)[0]
	if err := r.Commit(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	if n := len(s.singles); n != 2 {
		t.Fatalf("a lone commit made %d single calls in all, want 2", n)
	}
}

func TestCommitBatchFallsBackToSingleCalls(t *testing.T) {
	s := newBatcher()
	s.noBatch = true
	r := serveBatcher(t, s)
	gs := newGIDs(t, 4)
	s.codes[gs[1].String()] = codes.NotFound
	errs := commitAll(t, r, s, gs, nil)
	for i, err := range errs {
		if i == 1 {
			if !errors.Is(err, participant.ErrUnknownBranch) {
				t.Errorf("commit %d: %v", i, err)
			}
		} else if err != nil {
			t.Errorf("commit %d: %v", i, err)
		}
	}
	if len(s.singles) != 4 || len(s.batches) != 0 {
		t.Fatalf("singles %v, batches %v: want every commit alone", s.singles, s.batches)
	}
}

// A participant whose batch answer does not match the request: every
// commit of the batch is of unknown outcome (it may have been applied).
func TestGarbageBatchAnswerIsOutcomeUnknown(t *testing.T) {
	s := newBatcher()
	s.garbage = true
	r := serveBatcher(t, s)
	gs := newGIDs(t, 3)
	errs := commitAll(t, r, s, gs, nil)
	if errs[0] != nil {
		t.Fatalf("the single call: %v", errs[0])
	}
	for _, err := range errs[1:] {
		if !errors.Is(err, participant.ErrOutcomeUnknown) {
			t.Errorf("%v, want outcome unknown", err)
		}
	}
}
