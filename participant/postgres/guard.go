package postgres

import (
	"context"
	"database/sql"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

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
	c := &claim{r: r, owner: owner, key: int64(h.Sum64())}
	if err := c.take(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

type claim struct {
	r     *Resource
	owner string
	key   int64

	mu   sync.Mutex
	conn *sql.Conn // holds the lock; nil once lost or released
}

// take acquires the lock on a new connection, waiting until ctx ends.
func (c *claim) take(ctx context.Context) error {
	conn, err := c.r.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("postgres: %s: claim coordinator id %s: %w", c.r.name, c.owner, err)
	}
	for {
		var got bool
		err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock($1)", c.key).Scan(&got)
		if err != nil {
			discard(conn)
			if ctx.Err() != nil {
				return fmt.Errorf("%w: %s (database %s): coordinator id %s is held by another session: %w", participant.ErrOwnerRunning, c.r.name, c.r.database, c.owner, ctx.Err())
			}
			return fmt.Errorf("postgres: %s: claim coordinator id %s: %w", c.r.name, c.owner, err)
		}
		if got {
			c.conn = conn
			return nil
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			_ = conn.Close()
			return fmt.Errorf("%w: %s (database %s): coordinator id %s is held by another session", participant.ErrOwnerRunning, c.r.name, c.r.database, c.owner)
		case <-t.C:
		}
	}
}

// Check implements participant.Claim. The lock lives as long as its
// session: a session that still answers still holds it.
func (c *claim) Check(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		var one int
		if err := c.conn.QueryRowContext(ctx, "SELECT 1").Scan(&one); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		discard(c.conn)
		c.conn = nil
	}
	// Lost: take it again at once, or report who has it.
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	return c.take(tctx)
}

// Release implements participant.Claim.
func (c *claim) Release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	conn := c.conn
	c.conn = nil
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_unlock($1)", c.key); err != nil {
		// Closing the session releases the lock as well.
		discard(conn)
		return nil
	}
	return conn.Close()
}
