package postgres

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/participant"
)

// A Resource can hold the commit decisions of the transactions it takes
// part in (participant.DecisionHolder). The decision is one row of a table
// in the same database (DefaultDecisionTable unless Options.DecisionTable
// says otherwise), inserted by the holder branch in its own transaction
// just before its one-phase COMMIT: that COMMIT is the transaction's commit
// point.
//
// The holder branch takes a transaction-level advisory lock on a key
// derived from the transaction id when it begins, before any other branch
// can be prepared. A fence (recovery, or a coordinator that lost the reply
// to the holder's COMMIT) ends any session still holding that lock, waits
// for it, and inserts an abort row under the same primary key: the key
// decides between a late commit and the fence, and once the fence has run
// no commit of the transaction can ever be recorded. Abort rows can
// therefore be deleted as soon as every branch is rolled back.
//
// The table (schema on the right) is created when missing, by HolderReady:
//
//	txid        uuid PRIMARY KEY
//	coordinator text NOT NULL         -- <prefix>.<coordinator id>
//	outcome     "char" NOT NULL       -- 'C' commit, 'A' abort (a fence)
//	epoch       bigint NOT NULL       -- the coordinator run that decided
//	decided_at  timestamptz NOT NULL  -- the holder's clock
//	branches    text[] NOT NULL       -- the other branches, "<resource>/<gid>"

// DefaultDecisionTable is the decision table's name when
// Options.DecisionTable is empty.
const DefaultDecisionTable = "txcoord_decisions"

var (
	// ErrHolderPrivilege reports a decision or marker table that cannot be
	// created or used with the connection's role; the error names the
	// privilege.
	ErrHolderPrivilege = errors.New("postgres: missing privilege for a txcoord table")
	// ErrBadDecisionRow reports a decision row this build cannot read.
	ErrBadDecisionRow = errors.New("postgres: malformed decision row")
)

var _ participant.DecisionHolder = (*Resource)(nil)
var _ participant.HolderBranch = (*Branch)(nil)

// fenceChunk bounds how many transactions one fence settles in one local
// transaction (each takes an advisory lock).
const fenceChunk = 256

// forgetChunk bounds how many rows one DELETE removes.
const forgetChunk = 2000

// fenceLockTimeout bounds a fence's wait for a holder session that does
// not end when told to.
const fenceLockTimeout = 10 * time.Second

// decisionTable returns the table's quoted, possibly schema-qualified,
// name.
func (r *Resource) decisionTable() string {
	t := pq.QuoteIdentifier(r.table)
	if r.schema != "" {
		t = pq.QuoteIdentifier(r.schema) + "." + t
	}
	return t
}

// DecisionTable returns the decision table's name as SQL would write it.
func (r *Resource) DecisionTable() string { return r.decisionTable() }

func (r *Resource) decisionDDL() string {
	return "CREATE TABLE IF NOT EXISTS " + r.decisionTable() + ` (
	txid uuid PRIMARY KEY,
	coordinator text NOT NULL,
	outcome "char" NOT NULL CHECK (outcome IN ('C', 'A')),
	epoch bigint NOT NULL,
	decided_at timestamptz NOT NULL DEFAULT now(),
	branches text[] NOT NULL DEFAULT '{}')`
}

// HolderReady implements participant.DecisionHolder: it creates the
// decision table if it is missing and checks that the role may read,
// insert and delete its rows. An error wrapping ErrHolderPrivilege names
// what is missing and how to grant it.
func (r *Resource) HolderReady(ctx context.Context) error {
	if err := r.ready(ctx); err != nil {
		return err
	}
	if r.holderReady.Load() {
		return nil
	}
	r.holderMu.Lock()
	defer r.holderMu.Unlock()
	if r.holderReady.Load() {
		return nil
	}
	if err := r.ensureTable(ctx, "decision table", r.decisionTable(), r.decisionDDL(),
		"txid, coordinator, outcome, epoch, decided_at, branches"); err != nil {
		return err
	}
	r.holderReady.Store(true)
	return nil
}

// ensureTable creates one of txcoord's tables (what names it in errors)
// if it is missing, and checks that the role may read, insert and delete
// its rows and that it has the columns cols. An error wrapping
// ErrHolderPrivilege names what is missing and how to grant it.
func (r *Resource) ensureTable(ctx context.Context, what, tbl, ddl, cols string) error {
	var exists bool
	if err := r.db.QueryRowContext(ctx, "SELECT to_regclass($1) IS NOT NULL", tbl).Scan(&exists); err != nil {
		return fmt.Errorf("postgres: %s: look for the %s %s: %w", r.name, what, tbl, err)
	}
	if !exists {
		_, err := r.db.ExecContext(ctx, ddl)
		switch state := SQLState(err); {
		case err == nil, state == "42P07", state == "23505":
			// Created, here or by a concurrent process.
		case state == "42501":
			var role string
			_ = r.db.QueryRowContext(ctx, "SELECT current_user").Scan(&role)
			schema := r.schema
			if schema == "" {
				schema = "the first schema of search_path"
			}
			return fmt.Errorf("%w: %s (database %s): role %q may not create the %s %s: it needs CREATE on %s; or have the schema's owner run\n  %s;\n  GRANT SELECT, INSERT, DELETE ON %s TO %s;\n(%v)",
				ErrHolderPrivilege, r.name, r.database, role, what, tbl, schema, ddl, tbl, pq.QuoteIdentifier(role), err)
		case state == "3F000":
			return fmt.Errorf("postgres: %s (database %s): the %s's schema %q does not exist: %w", r.name, r.database, what, r.schema, err)
		default:
			return fmt.Errorf("postgres: %s: create the %s %s: %w", r.name, what, tbl, err)
		}
	}
	var sel, ins, del bool
	var role string
	err := r.db.QueryRowContext(ctx,
		"SELECT current_user, has_table_privilege($1, 'SELECT'), has_table_privilege($1, 'INSERT'), has_table_privilege($1, 'DELETE')", tbl).
		Scan(&role, &sel, &ins, &del)
	if err != nil {
		return fmt.Errorf("postgres: %s: check privileges on %s: %w", r.name, tbl, err)
	}
	var missing []string
	for _, p := range []struct {
		ok   bool
		name string
	}{{sel, "SELECT"}, {ins, "INSERT"}, {del, "DELETE"}} {
		if !p.ok {
			missing = append(missing, p.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s (database %s): role %q lacks %s on the %s %s; have its owner run GRANT %s ON %s TO %s",
			ErrHolderPrivilege, r.name, r.database, role, strings.Join(missing, ", "), what, tbl, strings.Join(missing, ", "), tbl, pq.QuoteIdentifier(role))
	}
	// The columns this build reads and writes.
	rows, err := r.db.QueryContext(ctx, "SELECT "+cols+" FROM "+tbl+" LIMIT 0")
	if err != nil {
		return fmt.Errorf("postgres: %s: the %s %s does not have the expected columns (%s): %w", r.name, what, tbl, cols, err)
	}
	_ = rows.Close()
	return nil
}

// holderKey is the advisory lock key of a transaction's holder branch.
func holderKey(id ids.TxID) int64 {
	return int64(binary.BigEndian.Uint64(id[:8]) ^ binary.BigEndian.Uint64(id[8:]))
}

// BeginHolder implements participant.DecisionHolder: it begins a branch
// that takes the transaction's advisory lock in the same round trip as
// BEGIN. Its work and errors are those of any Branch; CommitDecision ends
// it.
func (r *Resource) BeginHolder(ctx context.Context, gid ids.GID) (participant.HolderBranch, error) {
	if err := r.ready(ctx); err != nil {
		return nil, err
	}
	if err := gid.Validate(); err != nil {
		return nil, err
	}
	if err := r.HolderReady(ctx); err != nil {
		return nil, err
	}
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: %s: begin holder %s: %w", r.name, gid, err)
	}
	if _, err := conn.ExecContext(ctx, "BEGIN; SELECT pg_advisory_xact_lock("+strconv.FormatInt(holderKey(gid.TxID), 10)+")"); err != nil {
		discard(conn)
		return nil, fmt.Errorf("postgres: %s: begin holder %s: %w", r.name, gid, err)
	}
	b := newBranch(r, gid, conn)
	b.holder = true
	return b, nil
}

// IsHolder reports whether the branch was begun as its transaction's
// decision holder.
func (b *Branch) IsHolder() bool { return b.holder }

// CommitDecision implements participant.HolderBranch: it inserts d's row
// and commits, in one round trip. A row already there for the transaction
// (a fence's abort) makes the INSERT fail and the branch roll back.
func (b *Branch) CommitDecision(ctx context.Context, d participant.Decision) error {
	if err := b.s.Lock(ctx); err != nil {
		return err
	}
	defer b.s.Unlock()
	if b.state != stateActive {
		return b.doneErr()
	}
	if !b.holder {
		return fmt.Errorf("postgres: %s: branch %s was not begun as a decision holder", b.r.name, b.gid)
	}
	if d.Outcome != participant.OutcomeCommit || d.TxID != b.gid.TxID {
		return fmt.Errorf("postgres: %s: branch %s can only commit its own transaction's COMMIT decision", b.r.name, b.gid)
	}
	if b.s.FirstErr() != nil {
		b.rollback(ctx)
		return fmt.Errorf("%w: %w: %s: branch %s saw an error: %w", participant.ErrDecisionRefused, ErrRolledBack, b.r.name, b.gid, b.s.FirstErr())
	}
	ins, err := b.r.insertDecision(d)
	if err != nil {
		b.rollback(ctx)
		return fmt.Errorf("%w: %w", participant.ErrDecisionRefused, err)
	}
	failpoint.Hit(failpoint.PGHolderBeforeInsert)
	q := ins + "; COMMIT"
	if failpoint.Armed(failpoint.PGHolderAfterInsert) {
		// Crash tests stop between the row and its COMMIT.
		if _, err = b.conn.ExecContext(ctx, ins); err == nil {
			failpoint.Hit(failpoint.PGHolderAfterInsert)
			q = "COMMIT"
		}
	}
	if err == nil {
		failpoint.During(failpoint.PGHolderCommitSent, func() {
			_, err = b.conn.ExecContext(ctx, q)
		})
	}
	switch {
	case err == nil:
		failpoint.Hit(failpoint.PGHolderAfterCommit)
		b.finish(stateCommitted, false)
		return nil
	case outcomeUnknown(ctx, err):
		b.finish(stateInDoubt, true)
		return fmt.Errorf("%w: postgres: %s: commit of decision holder %s: %w", participant.ErrOutcomeUnknown, b.r.name, b.gid, err)
	}
	b.rollback(ctx)
	return fmt.Errorf("%w: %w: %s: commit of decision holder %s: %w", participant.ErrDecisionRefused, ErrRolledBack, b.r.name, b.gid, err)
}

// insertDecision is the INSERT of d's row, with literals only, so that it
// can share a simple query with COMMIT. Every value is validated first.
func (r *Resource) insertDecision(d participant.Decision) (string, error) {
	if err := ids.ValidateOwner(d.Owner); err != nil {
		return "", err
	}
	elems := make([]string, 0, len(d.Branches))
	for _, b := range d.Branches {
		if err := ids.ValidateName("resource name", b.Resource); err != nil {
			return "", err
		}
		if err := b.GID.Validate(); err != nil {
			return "", err
		}
		elems = append(elems, ids.QuoteLiteral(b.Resource+"/"+b.GID.String()))
	}
	branches := "'{}'::text[]"
	if len(elems) > 0 {
		branches = "ARRAY[" + strings.Join(elems, ",") + "]::text[]"
	}
	return "INSERT INTO " + r.decisionTable() + " (txid, coordinator, outcome, epoch, branches) VALUES (" +
		ids.QuoteLiteral(d.TxID.String()) + ", " + ids.QuoteLiteral(d.Owner) + ", 'C', " +
		strconv.FormatUint(d.Epoch&(1<<63-1), 10) + ", " + branches + ")", nil
}

// uuidArray is a uuid[] literal of ids.
func uuidArray(txids []ids.TxID) string {
	var sb strings.Builder
	sb.WriteString("'{")
	for i, id := range txids {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(id.String())
	}
	sb.WriteString("}'::uuid[]")
	return sb.String()
}

// Fence implements participant.DecisionHolder.
func (r *Resource) Fence(ctx context.Context, owner string, txids []ids.TxID) (map[ids.TxID]participant.Decision, error) {
	if err := r.ready(ctx); err != nil {
		return nil, err
	}
	if err := ids.ValidateOwner(owner); err != nil {
		return nil, err
	}
	if err := r.HolderReady(ctx); err != nil {
		return nil, err
	}
	out := make(map[ids.TxID]participant.Decision, len(txids))
	for len(txids) > 0 {
		n := min(len(txids), fenceChunk)
		if err := r.fence(ctx, owner, txids[:n], out); err != nil {
			return nil, err
		}
		txids = txids[n:]
	}
	return out, nil
}

func (r *Resource) fence(ctx context.Context, owner string, txids []ids.TxID, out map[ids.TxID]participant.Decision) error {
	keys := make([]int64, 0, len(txids))
	for _, id := range txids {
		keys = append(keys, holderKey(id))
	}
	// Locks taken in one order: two fences cannot deadlock.
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	keyList := make([]string, len(keys))
	for i, k := range keys {
		keyList[i] = strconv.FormatInt(k, 10)
	}
	keyArray := "'{" + strings.Join(keyList, ",") + "}'::int8[]"
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("postgres: %s: fence: %w", r.name, err)
	}
	ok := false
	defer func() {
		if ok {
			_ = conn.Close()
		} else {
			discard(conn)
		}
	}()
	// End the sessions still running a holder branch of these
	// transactions: a coordinator that lost them will never finish them.
	// Without the privilege to signal them, the fence waits for them.
	if _, err := conn.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_locks
		WHERE locktype = 'advisory' AND objsubid = 1 AND granted AND pid <> pg_backend_pid()
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND ((classid::int8 << 32) | objid::int8) = ANY(`+keyArray+`)`); err != nil && connLost(err) {
		return fmt.Errorf("postgres: %s: fence: %w", r.name, err)
	}
	tbl := r.decisionTable()
	_, err = conn.ExecContext(ctx, "BEGIN; SET LOCAL lock_timeout = '"+strconv.Itoa(int(fenceLockTimeout/time.Millisecond))+"ms'; "+
		"SELECT pg_advisory_xact_lock(k) FROM unnest("+keyArray+") k; "+
		"INSERT INTO "+tbl+" (txid, coordinator, outcome, epoch) SELECT u, "+ids.QuoteLiteral(owner)+", 'A', 0 FROM unnest("+uuidArray(txids)+") u ON CONFLICT (txid) DO NOTHING")
	if err != nil {
		return fmt.Errorf("postgres: %s: fence %d transactions: %w", r.name, len(txids), err)
	}
	got, err := r.readDecisions(ctx, conn, "txid = ANY("+uuidArray(txids)+")")
	if err != nil {
		return err
	}
	failpoint.Hit(failpoint.PGBeforeFence)
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("postgres: %s: commit fence: %w", r.name, err)
	}
	failpoint.Hit(failpoint.PGAfterFence)
	ok = true
	for _, d := range got {
		out[d.TxID] = d
	}
	for _, id := range txids {
		if _, found := out[id]; !found {
			return fmt.Errorf("%w: %s: fence of %s left no row", ErrBadDecisionRow, r.name, id)
		}
	}
	return nil
}

type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// readDecisions reads the rows matching where (literals only).
func (r *Resource) readDecisions(ctx context.Context, q queryer, where string, args ...any) ([]participant.Decision, error) {
	rows, err := q.QueryContext(ctx, "SELECT txid::text, coordinator, outcome::text, epoch, decided_at, array_to_string(branches, ' ') FROM "+
		r.decisionTable()+" WHERE "+where+" ORDER BY decided_at, txid", args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: %s: read decisions: %w", r.name, err)
	}
	defer rows.Close()
	var out []participant.Decision
	for rows.Next() {
		var (
			txid, owner, outcome, branches string
			epoch                          int64
			at                             time.Time
		)
		if err := rows.Scan(&txid, &owner, &outcome, &epoch, &at, &branches); err != nil {
			return nil, fmt.Errorf("postgres: %s: read decisions: %w", r.name, err)
		}
		d, err := parseDecision(txid, owner, outcome, epoch, at, branches)
		if err != nil {
			return nil, fmt.Errorf("%w: %s table %s: %v", ErrBadDecisionRow, r.name, r.decisionTable(), err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: %s: read decisions: %w", r.name, err)
	}
	return out, nil
}

func parseDecision(txid, owner, outcome string, epoch int64, at time.Time, branches string) (participant.Decision, error) {
	id, err := ids.ParseTxID(txid)
	if err != nil {
		return participant.Decision{}, err
	}
	d := participant.Decision{TxID: id, Owner: owner, Epoch: uint64(epoch), Time: at}
	switch outcome {
	case "C":
		d.Outcome = participant.OutcomeCommit
	case "A":
		d.Outcome = participant.OutcomeAbort
	default:
		return d, fmt.Errorf("row %s: outcome %q is neither C nor A", txid, outcome)
	}
	for _, e := range strings.Fields(branches) {
		res, raw, ok := strings.Cut(e, "/")
		if !ok {
			return d, fmt.Errorf("row %s: branch %q is not <resource>/<gid>", txid, e)
		}
		g, err := ids.ParseGID(raw)
		if err != nil {
			return d, fmt.Errorf("row %s: branch %q: %v", txid, e, err)
		}
		if g.TxID != id || ids.ValidateName("resource", res) != nil {
			return d, fmt.Errorf("row %s: branch %q belongs elsewhere", txid, e)
		}
		d.Branches = append(d.Branches, participant.BranchRef{Resource: res, GID: g})
	}
	return d, nil
}

// HeldDecision implements participant.DecisionHolder.
func (r *Resource) HeldDecision(ctx context.Context, txid ids.TxID) (participant.Decision, error) {
	if err := r.ready(ctx); err != nil {
		return participant.Decision{}, err
	}
	got, err := r.readDecisions(ctx, r.db, "txid = $1", txid.String())
	if SQLState(err) == "42P01" {
		got, err = nil, nil // no table: nothing was ever decided here
	}
	if err != nil {
		return participant.Decision{}, err
	}
	if len(got) == 0 {
		return participant.Decision{}, fmt.Errorf("%w: %s at %s", participant.ErrNoDecision, txid, r.name)
	}
	return got[0], nil
}

// Decisions implements participant.DecisionHolder.
func (r *Resource) Decisions(ctx context.Context, owner string) ([]participant.Decision, error) {
	if err := r.ready(ctx); err != nil {
		return nil, err
	}
	got, err := r.readDecisions(ctx, r.db, "coordinator = $1", owner)
	if SQLState(err) == "42P01" {
		return nil, nil
	}
	return got, err
}

// Forget implements participant.DecisionHolder. The DELETE commits with
// synchronous_commit off: a delete lost in a crash leaves rows that the
// next recovery pass forgets, so it need not wait for the disk.
func (r *Resource) Forget(ctx context.Context, txids []ids.TxID) error {
	if err := r.ready(ctx); err != nil {
		return err
	}
	return r.deleteLazily(ctx, "decisions", len(txids), failpoint.PGHolderBeforeForget, failpoint.PGHolderAfterForget,
		func(lo, hi int) string {
			return "DELETE FROM " + r.decisionTable() + " WHERE txid = ANY(" + uuidArray(txids[lo:hi]) + ")"
		})
}

// deleteLazily runs the DELETE that del returns for items lo..hi-1 of n,
// forgetChunk at a time, each in a transaction committed with
// synchronous_commit off (what a crash loses, recovery deletes again).
// The crash points before and after bracket each chunk.
func (r *Resource) deleteLazily(ctx context.Context, what string, n int, before, after string, del func(lo, hi int) string) error {
	for lo := 0; lo < n; lo += forgetChunk {
		hi := min(lo+forgetChunk, n)
		failpoint.Hit(before)
		conn, err := r.db.Conn(ctx)
		if err != nil {
			return fmt.Errorf("postgres: %s: forget %d %s: %w", r.name, hi-lo, what, err)
		}
		_, err = conn.ExecContext(ctx, "BEGIN; SET LOCAL synchronous_commit = off; "+del(lo, hi)+"; COMMIT")
		if err != nil {
			// The session may be left inside the failed transaction.
			discard(conn)
			return fmt.Errorf("postgres: %s: forget %d %s: %w", r.name, hi-lo, what, err)
		}
		_ = conn.Close()
		failpoint.Hit(after)
	}
	return nil
}
