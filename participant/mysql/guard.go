package mysql

import (
	"context"
	"database/sql"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"
	"time"

	"github.com/txcoord/txcoord/participant"
)

var _ participant.Guard = (*Resource)(nil)

// Guard claims owner with a named lock (GET_LOCK) held on a connection of
// its own, so that a second coordinator with the same id against this
// server fails to start. The server releases the lock when the holding
// session ends; Claim.Check notices and takes it again. The lock's name is
// a hash of owner (names are at most 64 characters), so it is server-wide
// like the xids it protects.
func (r *Resource) Guard(ctx context.Context, owner string) (participant.Claim, error) {
	if err := r.ready(ctx); err != nil {
		return nil, err
	}
	h := fnv.New64a()
	h.Write([]byte("txcoord owner " + owner))
	c := &claim{r: r, owner: owner, lock: "txcoord-" + strconv.FormatUint(h.Sum64(), 16)}
	if err := c.take(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

type claim struct {
	r     *Resource
	owner string
	lock  string

	mu   sync.Mutex
	conn *sql.Conn // holds the lock; nil once lost or released
}

func (c *claim) take(ctx context.Context) error {
	conn, err := c.r.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("mysql: %s: claim coordinator id %s: %w", c.r.name, c.owner, err)
	}
	for {
		var got sql.NullInt64
		err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", c.lock).Scan(&got)
		if err != nil {
			discard(conn)
			if ctx.Err() != nil {
				return fmt.Errorf("%w: %s (database %s): coordinator id %s is held by another session: %w", participant.ErrOwnerRunning, c.r.name, c.r.database, c.owner, ctx.Err())
			}
			return fmt.Errorf("mysql: %s: claim coordinator id %s: %w", c.r.name, c.owner, err)
		}
		if got.Valid && got.Int64 == 1 {
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

// Check implements participant.Claim: a session that still holds the lock
// still answers that it does.
func (c *claim) Check(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		var mine sql.NullInt64
		err := c.conn.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?) = CONNECTION_ID()", c.lock).Scan(&mine)
		if err == nil && mine.Valid && mine.Int64 == 1 {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		discard(c.conn)
		c.conn = nil
	}
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
	if _, err := conn.ExecContext(ctx, "DO RELEASE_LOCK(?)", c.lock); err != nil {
		discard(conn)
		return nil
	}
	return conn.Close()
}
