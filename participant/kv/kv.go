// Package kv is an embedded, durable key-value participant stored in one
// bbolt file. It needs no server: the embedded demo and the protocol and
// crash tests use it as a real two-phase-commit resource.
//
// Concurrency control is optimistic. A Branch buffers its writes and
// remembers the version of every key it reads or writes. Prepare checks that
// each of those keys still has that version and that no prepared branch
// holds it, then writes the branch's write set to the "prepared" bucket in
// one fsynced transaction and votes yes. From then until Commit or Rollback
// the prepared branch locks its keys: written keys exclusively, keys only
// read shared. A conflict is a no vote with an error wrapping ErrConflict.
// Prepared branches, and their locks, survive a restart.
//
// Layout of the file:
//
//	data      key -> version (8 bytes, big-endian) + value
//	prepared  gid -> checksummed write set (see entry.go)
//	committed gid -> commit time (8 bytes, Unix nanoseconds): the tombstone
//	             that proves a branch committed, written in the commit's own
//	             bbolt transaction and kept until the coordinator forgets it
//	             (participant.Prover)
//
// Concurrent prepares, commits and rollbacks share one bbolt write
// transaction and so one fsync.
package kv

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
)

var (
	// ErrConflict reports that a branch cannot be prepared or committed
	// because a key it read or wrote has changed since, or is held by a
	// prepared branch. The branch votes no; the transaction may be retried.
	ErrConflict = errors.New("kv: conflict")
	// ErrLocked reports that the store's file is held open by another
	// process, or by another Store in this one.
	ErrLocked = errors.New("kv: store file is locked")
	// ErrCorrupt reports stored bytes that fail their checksum or do not
	// decode. A corrupt prepared entry makes Open fail.
	ErrCorrupt = errors.New("kv: corrupt data")
	// ErrClosed reports use of a closed Store.
	ErrClosed = errors.New("kv: store is closed")
	// ErrGIDInUse reports a Begin or Prepare with a gid that a live or
	// prepared branch of this store already has.
	ErrGIDInUse = errors.New("kv: gid already in use")
	// ErrInvalidKey reports an empty or oversized key, or an oversized
	// value.
	ErrInvalidKey = errors.New("kv: invalid key or value")
	// ErrNotInt64 reports a value that GetInt64 cannot parse.
	ErrNotInt64 = errors.New("kv: value is not a decimal int64")
)

// DefaultLockTimeout is how long Open waits for the file lock when
// Options.LockTimeout is zero.
const DefaultLockTimeout = time.Second

var (
	bucketData      = []byte("data")
	bucketPrepared  = []byte("prepared")
	bucketCommitted = []byte("committed")
)

// Options configures Open. The zero value is ready to use.
type Options struct {
	// LockTimeout bounds the wait for the file's exclusive lock. Zero means
	// DefaultLockTimeout.
	LockTimeout time.Duration
	// Mode is the permission of a newly created file. Zero means 0600.
	Mode os.FileMode
	// Now returns the time stamped on prepared entries. Nil means time.Now.
	Now func() time.Time
}

// Store is one bbolt file holding committed data and prepared branches. It
// is a participant.Resource and is safe for concurrent use.
type Store struct {
	name  string
	path  string
	db    *bolt.DB
	now   func() time.Time
	group group

	closeOnce sync.Once
	closeErr  error

	mu     sync.Mutex
	closed bool
	locks  map[string]*keyLock // key -> prepared branches holding it
	held   map[string][]op     // gid of each prepared branch -> its ops
	live   map[string]bool     // gids of branches begun and not finished
}

var _ participant.Resource = (*Store)(nil)

// keyLock records which prepared branches hold a key.
type keyLock struct {
	writer  string              // gid holding it exclusively, or ""
	readers map[string]struct{} // gids holding it shared
}

// Open opens or creates the store file at path and loads its prepared
// branches, locking their keys again. name is the resource's name in the
// coordinator's registry. Open waits at most opts.LockTimeout for another
// holder of the file to let go, then fails with ErrLocked. A prepared entry
// that fails its checksum makes Open fail with ErrCorrupt, naming the gid.
func Open(path string, name string, opts Options) (*Store, error) {
	if err := ids.ValidateName("resource name", name); err != nil {
		return nil, fmt.Errorf("kv: open %s: %w", path, err)
	}
	timeout := opts.LockTimeout
	if timeout <= 0 {
		timeout = DefaultLockTimeout
	}
	mode := opts.Mode
	if mode == 0 {
		mode = 0o600
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	db, err := bolt.Open(path, mode, &bolt.Options{Timeout: timeout})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s is held by another process or Store (waited %v)", ErrLocked, path, timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("kv: open %s: %w", path, err)
	}
	s := &Store{
		name:  name,
		path:  path,
		db:    db,
		now:   now,
		group: group{db: db},
		locks: make(map[string]*keyLock),
		held:  make(map[string][]op),
		live:  make(map[string]bool),
	}
	if err := s.load(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("kv: open %s: %w", path, err)
	}
	return s, nil
}

// load creates the buckets and locks the keys of every prepared entry.
func (s *Store) load() error {
	if err := s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketData, bucketPrepared, bucketCommitted} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("create bucket %q: %w", b, err)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPrepared).ForEach(func(k, v []byte) error {
			gid := string(k)
			e, err := decodeEntry(v)
			if err != nil {
				return fmt.Errorf("prepared branch %q: %w", gid, err)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if err := s.conflictLocked(e.ops); err != nil {
				return fmt.Errorf("%w: prepared branch %q overlaps another: %v", ErrCorrupt, gid, err)
			}
			s.acquireLocked(gid, e.ops)
			return nil
		})
	})
}

// Close closes the file. It waits for writes in progress and is safe to
// call twice.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("kv: close %s: %w", s.path, err)
		}
	})
	return s.closeErr
}

// Name returns the resource name given to Open.
func (s *Store) Name() string { return s.name }

// Path returns the file's path.
func (s *Store) Path() string { return s.path }

// Begin starts a branch with the given gid. The returned branch is a
// *Branch.
func (s *Store) Begin(ctx context.Context, gid ids.GID) (participant.Branch, error) {
	return s.begin(ctx, gid)
}

func (s *Store) begin(ctx context.Context, gid ids.GID) (*Branch, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := gid.Validate(); err != nil {
		return nil, fmt.Errorf("kv: begin in %s: %w", s.name, err)
	}
	raw := gid.String()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if _, ok := s.held[raw]; ok || s.live[raw] {
		return nil, fmt.Errorf("%w: %s in %s", ErrGIDInUse, raw, s.name)
	}
	s.live[raw] = true
	return &Branch{s: s, gid: gid, raw: raw, state: branchActive, keys: make(map[string]*keyState)}, nil
}

// Enlist enlists a new branch of this store in tx (tx.Enlist(ctx, s)) and
// returns it typed.
func (s *Store) Enlist(ctx context.Context, tx participant.Enlister) (*Branch, error) {
	br, err := tx.Enlist(ctx, s)
	if err != nil {
		return nil, err
	}
	b, ok := br.(*Branch)
	if !ok {
		return nil, fmt.Errorf("kv: enlist in %s: got a branch of type %T, want *kv.Branch", s.name, br)
	}
	return b, nil
}

// Commit applies the prepared branch gid to the data, bumping the version
// of every key it writes, removes its prepared entry, writes its tombstone
// and releases its locks, in one fsynced transaction. A branch committed
// before is proven by its tombstone (nil); otherwise, if no branch gid is
// prepared, it returns an error wrapping participant.ErrUnknownBranch.
func (s *Store) Commit(ctx context.Context, gid ids.GID) error {
	raw := gid.String()
	err := s.group.submit(ctx, writeCommit, func(tx *bolt.Tx) (effects, error) {
		pb := tx.Bucket(bucketPrepared)
		v := pb.Get([]byte(raw))
		if v == nil {
			if tx.Bucket(bucketCommitted).Get([]byte(raw)) != nil {
				return effects{}, nil // committed before: the tombstone proves it
			}
			return effects{}, fmt.Errorf("%w: %s in %s (and no tombstone proves it committed)", participant.ErrUnknownBranch, raw, s.name)
		}
		e, err := decodeEntry(v)
		if err != nil {
			return effects{}, fmt.Errorf("prepared branch %q: %w", raw, err)
		}
		if err := applyOps(tx, e.ops); err != nil {
			return effects{}, err
		}
		if err := pb.Delete([]byte(raw)); err != nil {
			return effects{}, failTx(err)
		}
		var at [8]byte
		binary.BigEndian.PutUint64(at[:], uint64(s.now().UnixNano()))
		if err := tx.Bucket(bucketCommitted).Put([]byte(raw), at[:]); err != nil {
			return effects{}, failTx(err)
		}
		return effects{onCommit: func() { s.release(raw) }}, nil
	})
	if err != nil {
		return fmt.Errorf("kv: commit %s: %w", raw, err)
	}
	return nil
}

var _ participant.Prover = (*Store)(nil)

// ForgetProofs implements participant.Prover: it deletes the tombstones
// of gids.
func (s *Store) ForgetProofs(ctx context.Context, gids []ids.GID) error {
	err := s.group.submit(ctx, writeOther, func(tx *bolt.Tx) (effects, error) {
		b := tx.Bucket(bucketCommitted)
		for _, g := range gids {
			if err := b.Delete([]byte(g.String())); err != nil {
				return effects{}, failTx(err)
			}
		}
		return effects{}, nil
	})
	if err != nil {
		return fmt.Errorf("kv: forget %d tombstones in %s: %w", len(gids), s.name, err)
	}
	return nil
}

// Proofs implements participant.Prover.
func (s *Store) Proofs(ctx context.Context, owner string) ([]ids.GID, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	prefix := []byte(owner + ".")
	var out []ids.GID
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketCommitted).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if g, err := ids.ParseGID(string(k)); err == nil {
				out = append(out, g)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kv: list tombstones in %s: %w", s.name, err)
	}
	return out, nil
}

// Rollback discards the prepared branch gid and releases its locks. It
// returns an error wrapping participant.ErrUnknownBranch if no branch gid is
// prepared.
func (s *Store) Rollback(ctx context.Context, gid ids.GID) error {
	raw := gid.String()
	err := s.group.submit(ctx, writeOther, func(tx *bolt.Tx) (effects, error) {
		pb := tx.Bucket(bucketPrepared)
		if pb.Get([]byte(raw)) == nil {
			return effects{}, fmt.Errorf("%w: %s in %s", participant.ErrUnknownBranch, raw, s.name)
		}
		if err := pb.Delete([]byte(raw)); err != nil {
			return effects{}, failTx(err)
		}
		return effects{onCommit: func() { s.release(raw) }}, nil
	})
	if err != nil {
		return fmt.Errorf("kv: rollback %s: %w", raw, err)
	}
	return nil
}

// Prepared lists the prepared branches, in gid order. Since is the prepare
// time stored in each entry; GID is zero for an entry whose name is not a
// txcoord gid.
func (s *Store) Prepared(ctx context.Context) ([]participant.Prepared, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []participant.Prepared
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPrepared).ForEach(func(k, v []byte) error {
			e, err := decodeEntry(v)
			if err != nil {
				return fmt.Errorf("prepared branch %q: %w", k, err)
			}
			p := participant.Prepared{Raw: string(k), Since: e.since}
			if g, err := ids.ParseGID(p.Raw); err == nil {
				p.GID = g
			}
			out = append(out, p)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("kv: list prepared in %s: %w", s.name, err)
	}
	return out, nil
}

// Scan returns the committed value of every key that starts with prefix.
// Work buffered in branches and prepared branches are not seen.
func (s *Store) Scan(ctx context.Context, prefix string) (map[string][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make(map[string][]byte)
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketData).Cursor()
		p := []byte(prefix)
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			_, val, err := decodeValue(string(k), v)
			if err != nil {
				return err
			}
			out[string(k)] = append([]byte{}, val...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kv: scan %s: %w", s.name, err)
	}
	return out, nil
}

// view runs fn in a read transaction.
func (s *Store) view(fn func(tx *bolt.Tx) error) error {
	err := s.db.View(fn)
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// readCommitted returns the committed version and a copy of the value of
// key; version 0 means the key is absent.
func (s *Store) readCommitted(key string) (version uint64, value []byte, exists bool, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketData).Get([]byte(key))
		if v == nil {
			return nil
		}
		ver, val, err := decodeValue(key, v)
		if err != nil {
			return err
		}
		version, value, exists = ver, append([]byte{}, val...), true
		return nil
	})
	return version, value, exists, err
}

// validate checks that no prepared branch holds a key of ops in a
// conflicting mode and that every key still has the version in ops. data
// is the data bucket of a transaction that sees every committed write.
func (s *Store) validate(data *bolt.Bucket, ops []op) error {
	s.mu.Lock()
	err := s.conflictLocked(ops)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.validateVersions(data, ops)
}

// validateVersions checks that every key of ops still has the version in
// ops.
func (s *Store) validateVersions(data *bolt.Bucket, ops []op) error {
	for _, o := range ops {
		var now uint64
		if v := data.Get([]byte(o.key)); v != nil {
			ver, _, err := decodeValue(o.key, v)
			if err != nil {
				return err
			}
			now = ver
		}
		if now != o.version {
			return fmt.Errorf("%w: key %q changed since it was read (version %d, now %d)", ErrConflict, o.key, o.version, now)
		}
	}
	return nil
}

// applyOps writes the puts and deletes of ops to the data bucket, with a
// new version for the keys put.
func applyOps(tx *bolt.Tx, ops []op) error {
	data := tx.Bucket(bucketData)
	version, err := data.NextSequence()
	if err != nil {
		return failTx(err)
	}
	for _, o := range ops {
		switch o.kind {
		case opPut:
			err = data.Put([]byte(o.key), encodeValue(version, o.value))
		case opDelete:
			err = data.Delete([]byte(o.key))
		}
		if err != nil {
			return failTx(err)
		}
	}
	return nil
}

// conflictLocked reports whether a prepared branch holds a key of ops in a
// mode that excludes ops: any holder excludes a write, a writer excludes a
// read. s.mu is held.
func (s *Store) conflictLocked(ops []op) error {
	for _, o := range ops {
		l := s.locks[o.key]
		if l == nil {
			continue
		}
		if l.writer != "" {
			return fmt.Errorf("%w: key %q is written by prepared branch %s", ErrConflict, o.key, l.writer)
		}
		if o.kind.writes() {
			for r := range l.readers {
				return fmt.Errorf("%w: key %q is read by prepared branch %s", ErrConflict, o.key, r)
			}
		}
	}
	return nil
}

// acquireLocked locks the keys of ops for the prepared branch gid. s.mu is
// held and conflictLocked(ops) has returned nil.
func (s *Store) acquireLocked(gid string, ops []op) {
	for _, o := range ops {
		l := s.locks[o.key]
		if l == nil {
			l = &keyLock{}
			s.locks[o.key] = l
		}
		if o.kind.writes() {
			l.writer = gid
		} else {
			if l.readers == nil {
				l.readers = make(map[string]struct{})
			}
			l.readers[gid] = struct{}{}
		}
	}
	s.held[gid] = ops
}

// release unlocks the keys of the prepared branch gid.
func (s *Store) release(gid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range s.held[gid] {
		l := s.locks[o.key]
		if l == nil {
			continue
		}
		if l.writer == gid {
			l.writer = ""
		}
		delete(l.readers, gid)
		if l.writer == "" && len(l.readers) == 0 {
			delete(s.locks, o.key)
		}
	}
	delete(s.held, gid)
}
