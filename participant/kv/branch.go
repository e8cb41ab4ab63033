package kv

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"

	bolt "go.etcd.io/bbolt"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
)

// Branch is one transaction's work at a Store. It buffers writes in memory
// until Prepare or CommitOnePhase. Its methods may be called from several
// goroutines but run one at a time.
type Branch struct {
	s   *Store
	gid ids.GID
	raw string

	mu    sync.Mutex
	state branchState
	keys  map[string]*keyState // every key read or written
	vote  participant.Vote     // result of Prepare, once prepared
	err   error                // error of Prepare or CommitOnePhase, once finished by one
}

var _ participant.Branch = (*Branch)(nil)

type branchState int

const (
	branchActive    branchState = 1 + iota
	branchVoted                 // Prepare voted; vote and err hold the answer
	branchCommitted             // CommitOnePhase ran; err holds its result
	branchAborted               // Abort ran
)

// keyState is what a branch knows of one key.
type keyState struct {
	version uint64 // committed version when first touched; 0 means absent
	value   []byte // committed value when first touched
	exists  bool
	write   opKind // 0 (not written), opPut or opDelete
	newVal  []byte // for opPut
}

// GID names the branch.
func (b *Branch) GID() ids.GID { return b.gid }

// Resource returns the branch's Store.
func (b *Branch) Resource() participant.Resource { return b.s }

// Get returns the value of key as this branch sees it: its own write if it
// made one, else the committed value when the branch first touched key.
// Reads are repeatable; the version read is checked at prepare.
func (b *Branch) Get(ctx context.Context, key string) ([]byte, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ks, err := b.touch(ctx, key)
	if err != nil {
		return nil, false, err
	}
	switch ks.write {
	case opPut:
		return append([]byte{}, ks.newVal...), true, nil
	case opDelete:
		return nil, false, nil
	}
	if !ks.exists {
		return nil, false, nil
	}
	return append([]byte{}, ks.value...), true, nil
}

// Put sets key to value in this branch.
func (b *Branch) Put(ctx context.Context, key string, value []byte) error {
	if int64(len(value)) > bolt.MaxValueSize-8 {
		return fmt.Errorf("%w: value of key %q is %d bytes", ErrInvalidKey, key, len(value))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	ks, err := b.touch(ctx, key)
	if err != nil {
		return err
	}
	ks.write, ks.newVal = opPut, append([]byte{}, value...)
	return nil
}

// Delete removes key in this branch. Deleting an absent key is not an
// error.
func (b *Branch) Delete(ctx context.Context, key string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	ks, err := b.touch(ctx, key)
	if err != nil {
		return err
	}
	ks.write, ks.newVal = opDelete, nil
	return nil
}

// GetInt64 reads key as a decimal int64 (the form PutInt64 writes). An
// absent key is 0 and false. A value that does not parse is an error
// wrapping ErrNotInt64.
func (b *Branch) GetInt64(ctx context.Context, key string) (int64, bool, error) {
	v, ok, err := b.Get(ctx, key)
	if err != nil || !ok {
		return 0, false, err
	}
	n, err := ParseInt64(v)
	if err != nil {
		return 0, false, fmt.Errorf("key %q: %w", key, err)
	}
	return n, true, nil
}

// PutInt64 sets key to n, written in decimal.
func (b *Branch) PutInt64(ctx context.Context, key string, n int64) error {
	return b.Put(ctx, key, strconv.AppendInt(nil, n, 10))
}

// ParseInt64 parses a value written by PutInt64.
func ParseInt64(v []byte) (int64, error) {
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrNotInt64, v)
	}
	return n, nil
}

// touch returns the state of key, reading its committed version on first
// use. b.mu is held.
func (b *Branch) touch(ctx context.Context, key string) (*keyState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if b.state != branchActive {
		return nil, fmt.Errorf("%w: %s", participant.ErrBranchDone, b.raw)
	}
	if key == "" || len(key) > bolt.MaxKeySize {
		return nil, fmt.Errorf("%w: key of %d bytes (1 to %d allowed)", ErrInvalidKey, len(key), bolt.MaxKeySize)
	}
	if ks := b.keys[key]; ks != nil {
		return ks, nil
	}
	ver, val, exists, err := b.s.readCommitted(key)
	if err != nil {
		return nil, fmt.Errorf("kv: read %q in %s: %w", key, b.raw, err)
	}
	ks := &keyState{version: ver, value: val, exists: exists}
	b.keys[key] = ks
	return ks, nil
}

// ops returns the branch's keys as ops sorted by key, and whether any
// writes. b.mu is held.
func (b *Branch) ops() ([]op, bool) {
	ops := make([]op, 0, len(b.keys))
	writes := false
	for k, ks := range b.keys {
		o := op{kind: opRead, key: k, version: ks.version}
		if ks.write != 0 {
			o.kind, o.value, writes = ks.write, ks.newVal, true
		}
		ops = append(ops, o)
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].key < ops[j].key })
	return ops, writes
}

// finish drops the branch's buffered work. b.mu is held.
func (b *Branch) finish(state branchState) {
	b.state = state
	b.keys = nil
	b.s.mu.Lock()
	delete(b.s.live, b.raw)
	b.s.mu.Unlock()
}

// Prepare validates the branch and votes. A branch that wrote nothing votes
// VoteReadOnly if its reads are still current, without touching disk. A
// branch that wrote is made durable in the "prepared" bucket and votes
// VoteYes, locking its keys until Commit or Rollback. A key changed since
// it was read, or held by a prepared branch, gives VoteNo with an error
// wrapping ErrConflict; the branch is then finished. A second Prepare
// returns the first answer.
func (b *Branch) Prepare(ctx context.Context) (participant.Vote, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case branchVoted:
		return b.vote, b.err
	case branchCommitted, branchAborted:
		return participant.VoteNo, fmt.Errorf("kv: prepare %s: %w", b.raw, participant.ErrBranchDone)
	}
	if err := ctx.Err(); err != nil {
		b.finish(branchVoted)
		b.vote, b.err = participant.VoteNo, err
		return b.vote, b.err
	}
	ops, writes := b.ops()
	var err error
	if writes {
		err = b.s.group.submit(ctx, writePrepare, b.s.prepareApply(b.raw, ops))
	} else {
		err = b.s.validateReadOnly(ops)
	}
	b.finish(branchVoted)
	switch {
	case err != nil:
		b.vote, b.err = participant.VoteNo, fmt.Errorf("kv: prepare %s: %w", b.raw, err)
	case writes:
		b.vote = participant.VoteYes
	default:
		b.vote = participant.VoteReadOnly
	}
	return b.vote, b.err
}

// CommitOnePhase validates the branch as Prepare does and applies its
// writes in one fsynced transaction, without a prepared entry. A conflict
// is an error wrapping ErrConflict and nothing is applied; a failed write
// wraps participant.ErrOutcomeUnknown. A second call returns the first
// result.
func (b *Branch) CommitOnePhase(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case branchCommitted:
		return b.err
	case branchVoted, branchAborted:
		return fmt.Errorf("kv: commit %s: %w", b.raw, participant.ErrBranchDone)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ops, writes := b.ops()
	var err error
	if writes {
		err = b.s.group.submit(ctx, writeOther, func(tx *bolt.Tx) (effects, error) {
			if err := b.s.validate(tx.Bucket(bucketData), ops); err != nil {
				return effects{}, err
			}
			return effects{}, applyOps(tx, ops)
		})
	} else {
		err = b.s.validateReadOnly(ops)
	}
	b.finish(branchCommitted)
	switch {
	case err == nil:
	case writes && !errors.Is(err, ErrConflict) && !errors.Is(err, ErrClosed) &&
		!errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded):
		// The write itself failed: an fsync error may still have left it
		// on disk.
		b.err = fmt.Errorf("%w: kv: commit %s: %w", participant.ErrOutcomeUnknown, b.raw, err)
	default:
		b.err = fmt.Errorf("kv: commit %s: %w", b.raw, err)
	}
	return b.err
}

// Abort drops the branch's buffered work. It is safe after a no or
// read-only vote, after CommitOnePhase, and twice. A branch that voted yes
// is prepared: Abort refuses with participant.ErrBranchDone, and
// Store.Rollback rolls it back.
func (b *Branch) Abort(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case branchActive:
		b.finish(branchAborted)
	case branchVoted:
		if b.vote == participant.VoteYes {
			return fmt.Errorf("kv: abort %s: %w: it is prepared; use Rollback", b.raw, participant.ErrBranchDone)
		}
	}
	return nil
}

// prepareApply returns the write that prepares branch gid with ops.
func (s *Store) prepareApply(gid string, ops []op) applyFunc {
	return func(tx *bolt.Tx) (effects, error) {
		pb := tx.Bucket(bucketPrepared)
		if pb.Get([]byte(gid)) != nil {
			return effects{}, fmt.Errorf("%w: %s is already prepared", ErrGIDInUse, gid)
		}
		if err := s.validate(tx.Bucket(bucketData), ops); err != nil {
			return effects{}, err
		}
		e := entry{since: s.now(), ops: ops}
		if err := pb.Put([]byte(gid), e.encode()); err != nil {
			return effects{}, failTx(err)
		}
		s.mu.Lock()
		s.acquireLocked(gid, ops)
		s.mu.Unlock()
		return effects{onFail: func() { s.release(gid) }}, nil
	}
}

// validateReadOnly checks a branch that wrote nothing: its reads must be
// current and not written by a prepared branch. The locks are checked
// before the data, so that a branch committed in between is seen by its
// new versions.
func (s *Store) validateReadOnly(ops []op) error {
	s.mu.Lock()
	err := s.conflictLocked(ops)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.view(func(tx *bolt.Tx) error {
		return s.validateVersions(tx.Bucket(bucketData), ops)
	})
}
