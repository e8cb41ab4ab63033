// Listing prepared branches: XA RECOVER and what of it is this
// Resource's.

package mysql

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
)

// listed reports whether XA RECOVER lists gid's xid.
func (r *Resource) listed(ctx context.Context, gid ids.GID) (bool, error) {
	_, ok, err := r.listedAs(ctx, gid)
	return ok, err
}

// listedAs reports whether XA RECOVER lists gid's branch in this database,
// and the xid it is listed under, as SQL.
func (r *Resource) listedAs(ctx context.Context, gid ids.GID) (string, bool, error) {
	xs, err := r.recoverXIDs(ctx)
	if err != nil {
		return "", false, err
	}
	tag := tagOf(r.database)
	for _, x := range xs {
		if g, _ := x.gid(); g == gid && x.in(tag) {
			return x.sql(), true, nil
		}
	}
	return "", false, nil
}

// recoverXIDs runs XA RECOVER, retried on another connection if a pooled
// one turns out to be dead.
func (r *Resource) recoverXIDs(ctx context.Context) ([]recovered, error) {
	r.mu.Lock()
	mariadb := r.server.mariadb
	r.mu.Unlock()
	const attempts = 3
	for i := 1; ; i++ {
		out, err := xaRecover(ctx, r.db, mariadb)
		if err == nil {
			return out, nil
		}
		if i == attempts || ctx.Err() != nil || !connLost(err) {
			return nil, fmt.Errorf("mysql: %s: %w", r.name, err)
		}
	}
}

// xaRecover runs XA RECOVER on db: on MariaDB its data column holds the
// raw bytes, on MySQL XA RECOVER CONVERT XID gives them in hex.
func xaRecover(ctx context.Context, db *sql.DB, mariadb bool) ([]recovered, error) {
	q, split := "XA RECOVER", splitData
	if !mariadb {
		q, split = "XA RECOVER CONVERT XID", splitHexData
	}
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", q, err)
	}
	defer rows.Close()
	var out []recovered
	for rows.Next() {
		var (
			format, gl, bl int64
			data           []byte
		)
		if err := rows.Scan(&format, &gl, &bl, &data); err != nil {
			return nil, fmt.Errorf("%s: %w", q, err)
		}
		x, err := split(format, gl, bl, data)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", q, err)
	}
	return out, nil
}

// Scan lists the prepared XA transactions of the server db reaches, as
// Resource.Prepared does, without creating or checking anything: for
// tools that only look (txctl scan).
func Scan(ctx context.Context, db *sql.DB) ([]participant.Prepared, error) {
	var version string
	if err := db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version); err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	xs, err := xaRecover(ctx, db, isMariaDB(version))
	if err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	return prepared(xs, ""), nil
}

// prepared lists xs; with a tag, only the txcoord branches that may be in
// the database with that tag, and every foreign xid.
func prepared(xs []recovered, tag string) []participant.Prepared {
	out := make([]participant.Prepared, 0, len(xs))
	for _, x := range xs {
		g, _ := x.gid()
		if !g.IsZero() && tag != "" && !x.in(tag) {
			continue // a branch in another database of the server
		}
		out = append(out, participant.Prepared{Raw: x.raw(), GID: g, Native: x.sql()})
	}
	return out
}

// Prepared lists the prepared XA transactions of the server that are this
// database's: XA RECOVER lists every database's, and the tag in each
// txcoord bqual tells them apart (a branch whose name leaves no room for
// the tag is listed by every Resource on the server). Ours carry their
// gid; foreign ones (another format id, or not a gid) a zero GID and, as
// Raw, the xid as SQL; Native is the xid as SQL for both. The server
// keeps no preparation time.
func (r *Resource) Prepared(ctx context.Context) ([]participant.Prepared, error) {
	if err := r.ready(ctx); err != nil {
		return nil, err
	}
	xs, err := r.recoverXIDs(ctx)
	if err != nil {
		return nil, err
	}
	return prepared(xs, tagOf(r.database)), nil
}
