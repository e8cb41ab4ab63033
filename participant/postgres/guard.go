package postgres

import (
	"context"
	"database/sql"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/txcoord/txcoord/participant"
)

var _ participant.Guard = (*Resource)(nil)

// Guard claims owner with a session advisory lock held on a connection of
// its own, so that a second coordinator with the same id against this
// database fails to start. The server releases the lock when the holding
// process dies.
func (r *Resource) Guard(ctx context.Context, owner string) (func() error, error) {
	h := fnv.New64a()
	h.Write([]byte("txcoord owner " + owner))
	key := int64(h.Sum64())
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: %s: claim coordinator id %s: %w", r.name, owner, err)
	}
	for {
		var got bool
		err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&got)
		if err != nil {
			discard(conn)
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w: %s (database %s): coordinator id %s is held by another session: %w", participant.ErrOwnerRunning, r.name, r.database, owner, ctx.Err())
			}
			return nil, fmt.Errorf("postgres: %s: claim coordinator id %s: %w", r.name, owner, err)
		}
		if got {
			break
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			_ = conn.Close()
			return nil, fmt.Errorf("%w: %s (database %s): coordinator id %s is held by another session", participant.ErrOwnerRunning, r.name, r.database, owner)
		case <-t.C:
		}
	}
	return func() error { return r.unguard(conn, key) }, nil
}

func (r *Resource) unguard(conn *sql.Conn, key int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := conn.ExecContext(ctx, "SELECT pg_advisory_unlock($1)", key)
	if err != nil {
		// Closing the session releases the lock as well.
		discard(conn)
		return nil
	}
	return conn.Close()
}
