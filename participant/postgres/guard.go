package postgres

import (
	"context"
	"database/sql"
	"hash/fnv"

	"github.com/txcoord/txcoord/internal/sqlguard"
	"github.com/txcoord/txcoord/participant"
)

var _ participant.Guard = (*Resource)(nil)

// Guard claims owner with a session advisory lock held on a connection of
// its own, so that a second coordinator with the same id against this
// database fails to start. The server releases the lock when the holding
// session ends; Claim.Check notices and takes it again. The connection
// comes from the resource's pool and stays out of it until Release: a pool
// limited with SetMaxOpenConns needs room for it.
func (r *Resource) Guard(ctx context.Context, owner string) (participant.Claim, error) {
	if err := r.ready(ctx); err != nil {
		return nil, err
	}
	h := fnv.New64a()
	h.Write([]byte("txcoord owner " + owner))
	return sqlguard.Claim(ctx, r.db, advisoryLock(int64(h.Sum64())), owner, sqlguard.Where{Adapter: "postgres", Resource: r.name, Database: r.database})
}

// advisoryLock is a session advisory lock on a key.
type advisoryLock int64

func (k advisoryLock) Try(ctx context.Context, conn *sql.Conn) (bool, error) {
	var got bool
	err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock($1)", int64(k)).Scan(&got)
	return got, err
}

// Held: the lock lives as long as its session, so a session that answers
// still holds it.
func (k advisoryLock) Held(ctx context.Context, conn *sql.Conn) (bool, error) {
	var one int
	err := conn.QueryRowContext(ctx, "SELECT 1").Scan(&one)
	return err == nil, err
}

func (k advisoryLock) Unlock(ctx context.Context, conn *sql.Conn) error {
	_, err := conn.ExecContext(ctx, "SELECT pg_advisory_unlock($1)", int64(k))
	return err
}
