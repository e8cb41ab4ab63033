package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/lib/pq"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/participant"
)

// A Resource proves its committed branches (participant.Prover). Prepare
// inserts the branch's gid into a marker table in the same round trip as
// PREPARE TRANSACTION, inside the branch: the row becomes visible when
// COMMIT PREPARED commits the branch and vanishes with it when the branch
// is rolled back, by anyone. When COMMIT PREPARED finds no such prepared
// transaction (SQLSTATE 42704), Commit answers nil only if the marker is
// there; otherwise the branch was never prepared, or was rolled back or
// lost (a failover to a standby that had not received it, a restore from
// backup, a ROLLBACK PREPARED by hand), and Commit returns
// participant.ErrUnknownBranch for the coordinator to report a heuristic
// hazard.
//
// A marker costs one index insert in the prepare's own WAL flush (no extra
// round trip or fsync) and one delete, batched with synchronous_commit off
// once the transaction's end is durable in the coordinator's log.
//
// The branch's transaction id checked with pg_xact_status() would cost no
// write, but is no proof across a failover to an asynchronous standby: the
// new primary hands out the lost branch's xid again, and the answer is then
// about another transaction.
//
// The table (created when missing, by New unless Options.NoMarkers):
//
//	gid       text COLLATE "C" PRIMARY KEY
//	marked_at timestamptz NOT NULL      -- when the branch was prepared

// DefaultMarkerTable is the marker table's name when Options.MarkerTable
// is empty.
const DefaultMarkerTable = "txcoord_markers"

var _ participant.Prover = (*Resource)(nil)

// markerTable returns the marker table's quoted, possibly
// schema-qualified, name.
func (r *Resource) markerTable() string {
	t := pq.QuoteIdentifier(r.markers)
	if r.schema != "" {
		t = pq.QuoteIdentifier(r.schema) + "." + t
	}
	return t
}

// MarkerTable returns the marker table's name as SQL would write it, or
// "" when the resource keeps no markers.
func (r *Resource) MarkerTable() string {
	if r.markers == "" {
		return ""
	}
	return r.markerTable()
}

func (r *Resource) markerDDL() string {
	return "CREATE TABLE IF NOT EXISTS " + r.markerTable() + ` (
	gid text COLLATE "C" PRIMARY KEY,
	marked_at timestamptz NOT NULL DEFAULT now())`
}

// markersReady creates the marker table if it is missing and checks the
// role's privileges on it.
func (r *Resource) markersReady(ctx context.Context) error {
	return r.ensureTable(ctx, "marker table", r.markerTable(), r.markerDDL(), "gid, marked_at")
}

// markStmt is the statement that goes between the check and PREPARE
// TRANSACTION, or "" without markers.
func (r *Resource) markStmt(gid ids.GID) string {
	if r.markers == "" {
		return ""
	}
	return "; INSERT INTO " + r.markerTable() + " (gid) VALUES (" + ids.QuoteLiteral(gid.String()) + ")"
}

// proven reports whether the marker of gid is there: the branch committed.
func (r *Resource) proven(ctx context.Context, gid ids.GID) (bool, error) {
	if r.markers == "" {
		return false, nil
	}
	var ok bool
	err := r.db.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM "+r.markerTable()+" WHERE gid = $1)", gid.String()).Scan(&ok)
	return ok, err
}

// ForgetProofs implements participant.Prover: it deletes the markers of
// gids, committing with synchronous_commit off (a delete lost in a crash
// leaves markers that the next recovery pass forgets).
func (r *Resource) ForgetProofs(ctx context.Context, gids []ids.GID) error {
	if err := r.ready(ctx); err != nil {
		return err
	}
	if r.markers == "" {
		return nil
	}
	return r.deleteLazily(ctx, "markers", len(gids), failpoint.PGBeforeForgetMarkers, failpoint.PGAfterForgetMarkers,
		func(lo, hi int) string {
			return "DELETE FROM " + r.markerTable() + " WHERE gid = ANY(" + gidArray(gids[lo:hi]) + ")"
		})
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
	// A range on the C-collated key: every gid of owner starts "owner.",
	// and '/' follows '.'.
	rows, err := r.db.QueryContext(ctx, "SELECT gid FROM "+r.markerTable()+" WHERE gid >= $1 AND gid < $2 ORDER BY gid",
		owner+".", owner+"/")
	if SQLState(err) == "42P01" {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: %s: list markers: %w", r.name, err)
	}
	defer rows.Close()
	var out []ids.GID
	for rows.Next() {
		var raw string
		if err := rows.Scan(&raw); err != nil {
			return nil, fmt.Errorf("postgres: %s: list markers: %w", r.name, err)
		}
		g, err := ids.ParseGID(raw)
		if err != nil {
			continue // not a gid of ours after all; left alone
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: %s: list markers: %w", r.name, err)
	}
	return out, nil
}

// PurgeMarkers deletes the markers older than age, for a resource whose
// proofs no coordinator forgets (a participant service's database: the
// coordinator reaches it only through the Participant API). A commit
// retried after that long without its marker is reported as a heuristic
// hazard, never as committed. It returns how many it deleted.
func (r *Resource) PurgeMarkers(ctx context.Context, age time.Duration) (int64, error) {
	if err := r.ready(ctx); err != nil {
		return 0, err
	}
	if r.markers == "" {
		return 0, nil
	}
	res, err := r.db.ExecContext(ctx, "DELETE FROM "+r.markerTable()+" WHERE marked_at < now() - make_interval(secs => $1)", age.Seconds())
	if err != nil {
		return 0, fmt.Errorf("postgres: %s: purge markers older than %v: %w", r.name, age, err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// gidArray returns gids as a text[] literal.
func gidArray(gids []ids.GID) string {
	var sb strings.Builder
	sb.WriteString("ARRAY[")
	for i, g := range gids {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(ids.QuoteLiteral(g.String()))
	}
	sb.WriteString("]::text[]")
	return sb.String()
}
