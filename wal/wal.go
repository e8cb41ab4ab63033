// Package wal is the coordinator's durable write-ahead log of decisions.
//
// The log holds one decision record per decided transaction (COMMIT, or a
// heuristic decision an operator made) and an END record once every branch
// acknowledged it. Presumed abort: a transaction with no decision record
// was aborted, so aborts are never written. Decision records are forced
// (fsynced) before Append returns, and concurrent appends share one fsync
// (group commit). END records are written lazily: they become durable
// with a later write, a Flush, or Close. Compact removes ended
// transactions.
//
// Two implementations: Bolt (go.etcd.io/bbolt, the real log) and Mem (for
// protocol tests).
package wal

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/txcoord/txcoord/ids"
)

var (
	// ErrCorrupt reports a record that fails its checksum or cannot be
	// decoded. It is wrapped in a *CorruptError naming the position.
	ErrCorrupt = errors.New("wal: corrupt record")
	// ErrLocked reports that another process holds the log file.
	ErrLocked = errors.New("wal: log is locked by another process")
	// ErrClosed reports use of a closed log.
	ErrClosed = errors.New("wal: log is closed")
	// ErrConflict reports an append that contradicts a decision already in
	// the log for the same transaction (DESIGN I3).
	ErrConflict = errors.New("wal: contradicts the logged decision")
	// ErrFailed reports that an earlier write or fsync failed. The log
	// refuses every later write: what is on disk is unknown until the
	// process restarts and reads it back.
	ErrFailed = errors.New("wal: log failed; restart to recover")
	// ErrWrongOwner reports a log opened for another coordinator than the
	// one that wrote it.
	ErrWrongOwner = errors.New("wal: log belongs to another coordinator")
	// ErrReadOnly reports a write to a log opened read-only.
	ErrReadOnly = errors.New("wal: log opened read-only")
	// ErrNotFound reports a transaction with no decision record.
	ErrNotFound = errors.New("wal: no decision record")
	// ErrBadRecord reports a record that is invalid before it is written.
	ErrBadRecord = errors.New("wal: invalid record")
	// ErrBadFile reports a log file that cannot be read as a log at all: not
	// a bbolt file, truncated, missing its buckets, or of an unknown format
	// version. The error names the path.
	ErrBadFile = errors.New("wal: not a readable log file")
)

// CorruptError names where a corrupt record was found.
type CorruptError struct {
	Path   string // log file
	Bucket string // bbolt bucket
	Key    uint64 // record key (log sequence number)
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("wal: corrupt record at %s bucket %q key %d: %s", e.Path, e.Bucket, e.Key, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// Kind is a record's kind. The zero value is invalid.
type Kind uint8

const (
	// KindCommit is the COMMIT decision: every branch listed must commit.
	KindCommit Kind = 1 + iota
	// KindAbort is an ABORT decision. The coordinator never writes one
	// (presumed abort); an operator's heuristic abort does.
	KindAbort
	// KindEnd says every branch acknowledged the decision.
	KindEnd
)

func (k Kind) String() string {
	switch k {
	case KindCommit:
		return "COMMIT"
	case KindAbort:
		return "ABORT"
	case KindEnd:
		return "END"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Valid reports whether k is a defined kind.
func (k Kind) Valid() bool { return k >= KindCommit && k <= KindEnd }

// Branch is one branch named in a decision record.
type Branch struct {
	Resource string  // resource name in the coordinator's registry
	GID      ids.GID // the branch's gid at that resource
}

// Record is one log record.
type Record struct {
	LSN      uint64 // position in the log, assigned by Append; 0 before
	Kind     Kind
	TxID     ids.TxID
	Time     time.Time // when the record was made (UTC, nanoseconds)
	Epoch    uint64    // the coordinator run that wrote it
	Branches []Branch  // decision records: every branch to drive

	// Heuristic decisions (made by an operator, not by the protocol).
	Heuristic bool
	Who       string
	Why       string

	// Holder names the resource whose own database holds the decision (a
	// decision holder). Such a record is a copy, noted once every branch
	// acknowledged (see Log.Note): it is ended as written.
	Holder string
}

// Decision is the state of one decided transaction.
type Decision struct {
	Record            // the decision record (KindCommit or KindAbort)
	Ended   bool      // an END record follows it
	EndLSN  uint64    // position of the END record, if ended
	EndTime time.Time // when END was recorded, if ended
}

// Stats counts what a log did since it was opened.
type Stats struct {
	Appends   uint64 // decision records made durable
	Ends      uint64 // END records written
	Notes     uint64 // holders' decisions noted (Log.Note)
	Syncs     uint64 // bbolt commits (each fsyncs)
	MaxBatch  uint64 // most records in one sync
	Compacted uint64 // transactions removed by compaction
	Pending   int    // decided transactions without END
}

// Log is the coordinator's log.
type Log interface {
	// Append makes a decision record (KindCommit or KindAbort) durable and
	// returns its LSN. It returns only after the fsync that covers the record
	// returned. Appending the same decision for a transaction twice returns
	// the first record's LSN; a different decision fails with ErrConflict.
	// An error other than ErrConflict, ErrBadRecord or a context error means
	// the record may or may not be durable.
	Append(ctx context.Context, rec Record) (uint64, error)
	// Note records a COMMIT decision kept by a decision holder (rec.Holder
	// set) whose every branch acknowledged it: a copy for audit and for
	// outcome questions once the holder's row is gone. Like End it does
	// not wait for disk: the record becomes durable with the next sync,
	// Flush or Close. Lookup sees it at once, ended; Pending never lists
	// it. Noting a transaction already decided the same way does nothing.
	Note(rec Record) error
	// End records that every branch of txid acknowledged its decision. It
	// does not wait for disk: the END record becomes durable with the next
	// sync, Flush or Close. Ending an unknown transaction is a no-op.
	End(txid ids.TxID) error
	// Flush makes every END record handed to the log so far durable.
	Flush(ctx context.Context) error
	// Lookup returns the decision logged for txid, or ErrNotFound.
	Lookup(txid ids.TxID) (Decision, error)
	// Pending returns the decisions without END, in log order.
	Pending() ([]Decision, error)
	// Records calls fn for every record in log order, checking each
	// checksum; a corrupt record stops the walk with a *CorruptError.
	Records(fn func(Record) error) error
	// Compact removes transactions whose END was recorded before
	// endedBefore (and is durable) and returns how many. Keeping ended
	// decisions a while lets the log still answer "committed" for them:
	// once removed, a transaction reads as never decided.
	Compact(ctx context.Context, endedBefore time.Time) (int, error)
	// Epoch is this run's number: one more than the previous run's.
	Epoch() uint64
	// Horizon is the latest END time of the transactions compaction
	// removed (zero if none was): a transaction begun at or before it may
	// have had a decision that is gone, so the log no longer tells whether
	// it committed. It is durable with the compaction.
	Horizon() time.Time
	// Stats reports counters since open.
	Stats() Stats
	// Close flushes END records and releases the log. It is safe to call
	// twice.
	Close() error
}

// Validate checks a decision record before it is appended.
func (r *Record) Validate() error {
	if r.Kind != KindCommit && r.Kind != KindAbort {
		return fmt.Errorf("%w: kind %v is not a decision", ErrBadRecord, r.Kind)
	}
	if r.TxID.IsZero() {
		return fmt.Errorf("%w: zero transaction id", ErrBadRecord)
	}
	if r.Kind == KindCommit && len(r.Branches) == 0 && r.Holder == "" {
		return fmt.Errorf("%w: COMMIT for %s names no branch", ErrBadRecord, r.TxID)
	}
	for i, b := range r.Branches {
		if b.Resource == "" {
			return fmt.Errorf("%w: branch %d of %s has no resource", ErrBadRecord, i, r.TxID)
		}
		if err := b.GID.Validate(); err != nil {
			return fmt.Errorf("%w: branch %d of %s: %v", ErrBadRecord, i, r.TxID, err)
		}
		if b.GID.TxID != r.TxID {
			return fmt.Errorf("%w: branch %d gid %s belongs to another transaction than %s", ErrBadRecord, i, b.GID, r.TxID)
		}
	}
	if len(r.Who) > 1024 || len(r.Why) > 4096 {
		return fmt.Errorf("%w: who/why too long", ErrBadRecord)
	}
	if r.Holder != "" {
		if r.Kind != KindCommit || r.Heuristic {
			return fmt.Errorf("%w: only a COMMIT made by the protocol can be kept by a holder", ErrBadRecord)
		}
		if err := ids.ValidateName("holder", r.Holder); err != nil {
			return fmt.Errorf("%w: %v", ErrBadRecord, err)
		}
	}
	return nil
}
