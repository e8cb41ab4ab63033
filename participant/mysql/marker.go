package mysql

import (
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/participant"
)

// A Resource proves its committed branches (participant.Prover). Prepare
// inserts the branch's gid into a marker table inside the branch, before
// XA END: the row becomes visible when XA COMMIT commits the branch and
// vanishes with it when the branch is rolled back, by anyone. When XA
// COMMIT answers "unknown XID", Commit answers nil only if the marker is
// there; otherwise the branch was never prepared, or was rolled back or
// lost, and Commit returns participant.ErrUnknownBranch for the coordinator
// to report a heuristic hazard.
//
// A marker costs one round trip and one index insert in the prepare's own
// redo-log flush, and one delete once the transaction's end is durable in
// the coordinator's log.
//
// The table (created when missing, by New unless Options.NoMarkers):
//
//	gid       VARBINARY(129) PRIMARY KEY
//	marked_at TIMESTAMP(6) NOT NULL     -- when the branch was prepared

var _ participant.Prover = (*Resource)(nil)

// forgetChunk is how many markers one DELETE removes.
const forgetChunk = 500

func (r *Resource) markerTable() string { return quoteIdent(r.markers) }

// MarkerTable returns the marker table's name as SQL would write it, or ""
// when the resource keeps no markers.
func (r *Resource) MarkerTable() string {
	if r.markers == "" {
		return ""
	}
	return r.markerTable()
}

func quoteIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

// markersReady creates the marker table when it is missing.
func (r *Resource) markersReady(ctx context.Context) error {
	_, err := r.db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+r.markerTable()+` (
	gid VARBINARY(129) NOT NULL PRIMARY KEY,
	marked_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB`)
	if err != nil {
		return fmt.Errorf("mysql: %s (database %s): create the marker table %s (or grant CREATE, or create it by hand, or set NoMarkers): %w",
			r.name, r.database, r.markerTable(), err)
	}
	var engine string
	err = r.db.QueryRowContext(ctx,
		"SELECT engine FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?", r.markers).Scan(&engine)
	if err != nil {
		return fmt.Errorf("mysql: %s: look up the marker table %s: %w", r.name, r.markerTable(), err)
	}
	if !strings.EqualFold(engine, "InnoDB") {
		return fmt.Errorf("mysql: %s: the marker table %s uses the %s engine: markers need InnoDB to commit and roll back with their branch", r.name, r.markerTable(), engine)
	}
	return nil
}

// markStmt inserts gid's marker.
func (r *Resource) markStmt(gid ids.GID) string {
	return "INSERT INTO " + r.markerTable() + " (gid) VALUES (X'" + hexString(gid.String()) + "')"
}

func hexString(s string) string { return hex.EncodeToString([]byte(s)) }

// proven reports whether the marker of gid is there: the branch committed.
func (r *Resource) proven(ctx context.Context, gid ids.GID) (bool, error) {
	if r.markers == "" {
		return false, nil
	}
	var n int
	err := r.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+r.markerTable()+" WHERE gid = X'"+hexString(gid.String())+"'").Scan(&n)
	return n > 0, err
}

// ForgetProofs implements participant.Prover.
func (r *Resource) ForgetProofs(ctx context.Context, gids []ids.GID) error {
	if err := r.ready(ctx); err != nil {
		return err
	}
	if r.markers == "" {
		return nil
	}
	for lo := 0; lo < len(gids); lo += forgetChunk {
		hi := min(lo+forgetChunk, len(gids))
		var sb strings.Builder
		sb.WriteString("DELETE FROM " + r.markerTable() + " WHERE gid IN (")
		for i, g := range gids[lo:hi] {
			if i > 0 {
				sb.WriteByte(',')
			}
			sb.WriteString("X'" + hexString(g.String()) + "'")
		}
		sb.WriteByte(')')
		failpoint.Hit(failpoint.MySQLBeforeForgetMarkers)
		if err := r.deleteMarkers(ctx, sb.String()); err != nil {
			return fmt.Errorf("mysql: %s: forget %d markers: %w", r.name, hi-lo, err)
		}
		failpoint.Hit(failpoint.MySQLAfterForgetMarkers)
	}
	return nil
}

// Proofs implements participant.Prover.
func (r *Resource) Proofs(ctx context.Context, owner string) ([]ids.GID, error) {
	if err := r.ready(ctx); err != nil {
		return nil, err
	}
	if r.markers == "" {
		return nil, nil
	}
	if err := ids.ValidateOwner(owner); err != nil {
		return nil, err
	}
	// A range on the binary key: every gid of owner starts "owner.", and
	// '/' follows '.'.
	rows, err := r.db.QueryContext(ctx, "SELECT gid FROM "+r.markerTable()+" WHERE gid >= ? AND gid < ? ORDER BY gid",
		[]byte(owner+"."), []byte(owner+"/"))
	if err != nil {
		return nil, fmt.Errorf("mysql: %s: list markers: %w", r.name, err)
	}
	defer rows.Close()
	var out []ids.GID
	for rows.Next() {
		var raw []byte
		if err := rows.Scan(&raw); err != nil {
			return nil, fmt.Errorf("mysql: %s: list markers: %w", r.name, err)
		}
		if g, err := ids.ParseGID(string(raw)); err == nil {
			out = append(out, g)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("mysql: %s: list markers: %w", r.name, err)
	}
	return out, nil
}

// PurgeMarkers deletes the markers older than age, for a resource whose
// proofs no coordinator forgets. It returns how many it deleted.
func (r *Resource) PurgeMarkers(ctx context.Context, age time.Duration) (int64, error) {
	if err := r.ready(ctx); err != nil {
		return 0, err
	}
	if r.markers == "" {
		return 0, nil
	}
	res, err := r.onceReadCommitted(ctx, "DELETE FROM "+r.markerTable()+" WHERE marked_at < NOW(6) - INTERVAL ? MICROSECOND", age.Microseconds())
	if err != nil {
		return 0, fmt.Errorf("mysql: %s: purge markers older than %v: %w", r.name, age, err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// readCommitted makes the session's next transaction (an autocommit
// DELETE of markers) run at READ COMMITTED: under REPEATABLE READ the
// DELETE would take next-key locks, and a marker being inserted next to a
// deleted one, by a branch on its way to XA PREPARE, would wait for it; so
// would the DELETE for a prepared branch's marker beside its range.
const readCommitted = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"

// deleteMarkers runs a DELETE of markers at READ COMMITTED, in one round
// trip where the pool takes several statements.
func (r *Resource) deleteMarkers(ctx context.Context, del string) error {
	_, err := r.onceReadCommitted(ctx, del)
	return err
}

// onceReadCommitted runs q, an autocommit statement, at READ COMMITTED on a
// connection of its own. A connection whose statement failed is closed,
// not pooled: the isolation level set for its next transaction might be
// left for a branch to begin with.
func (r *Resource) onceReadCommitted(ctx context.Context, q string, args ...any) (sql.Result, error) {
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	var res sql.Result
	if r.multi() && len(args) == 0 {
		res, err = conn.ExecContext(ctx, readCommitted+"; "+q)
	} else if _, err = conn.ExecContext(ctx, readCommitted); err == nil {
		res, err = conn.ExecContext(ctx, q, args...)
	}
	if err != nil {
		discard(conn)
		return nil, err
	}
	_ = conn.Close()
	return res, nil
}
