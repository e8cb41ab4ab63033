// Package sqlguard is the ownership guard the SQL participants share: a
// lock that a database server holds for one session, taken on a connection
// of its own and kept as long as that session lives (participant.Guard).
package sqlguard

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"sync"
	"time"

	"github.com/txcoord/txcoord/participant"
)

// Lock is a server's session lock.
type Lock interface {
	// Try takes the lock on conn without waiting: false if another
	// session holds it.
	Try(ctx context.Context, conn *sql.Conn) (bool, error)
	// Held reports whether conn's session still holds the lock (an error
	// when it cannot tell, say because the session is gone).
	Held(ctx context.Context, conn *sql.Conn) (bool, error)
	// Unlock gives the lock up.
	Unlock(ctx context.Context, conn *sql.Conn) error
}

// Where names the resource in errors: "postgres: bank_a" and its
// database.
type Where struct {
	Adapter, Resource, Database string
}

// Claim takes lock for owner on a connection from db, waiting until ctx
// ends while another session holds it (then the error wraps
// participant.ErrOwnerRunning; a ctx that ends before the lock could be
// asked for is no such proof).
func Claim(ctx context.Context, db *sql.DB, lock Lock, owner string, w Where) (participant.Claim, error) {
	c := &claim{db: db, lock: lock, owner: owner, w: w}
	if err := c.take(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

type claim struct {
	db    *sql.DB
	lock  Lock
	owner string
	w     Where

	mu   sync.Mutex
	conn *sql.Conn // holds the lock; nil once lost or released
}

func (c *claim) running(cause error) error {
	if cause != nil {
		return fmt.Errorf("%w: %s (database %s): coordinator id %s is held by another session: %w", participant.ErrOwnerRunning, c.w.Resource, c.w.Database, c.owner, cause)
	}
	return fmt.Errorf("%w: %s (database %s): coordinator id %s is held by another session", participant.ErrOwnerRunning, c.w.Resource, c.w.Database, c.owner)
}

// take acquires the lock on a new connection, waiting until ctx ends.
func (c *claim) take(ctx context.Context) error {
	conn, err := c.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("%s: %s: claim coordinator id %s: %w", c.w.Adapter, c.w.Resource, c.owner, err)
	}
	held := false // another session was seen holding it
	for {
		got, err := c.lock.Try(ctx, conn)
		if err != nil {
			discard(conn)
			if ctx.Err() != nil && held {
				return c.running(ctx.Err())
			}
			return fmt.Errorf("%s: %s: claim coordinator id %s: %w", c.w.Adapter, c.w.Resource, c.owner, err)
		}
		if got {
			c.conn = conn
			return nil
		}
		held = true
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			_ = conn.Close()
			return c.running(nil)
		case <-t.C:
		}
	}
}

// Check implements participant.Claim: a session that still answers holds
// the lock; a lost one is taken again at once, or who has it is reported.
func (c *claim) Check(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		if held, err := c.lock.Held(ctx, c.conn); err == nil && held {
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
	if err := c.lock.Unlock(ctx, conn); err != nil {
		// Closing the session releases the lock as well.
		discard(conn)
		return nil
	}
	return conn.Close()
}

// discard closes conn without returning it to the pool.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}
