package mysql

import (
	"context"
	"database/sql"
	"hash/fnv"
	"strconv"

	"github.com/txcoord/txcoord/internal/sqlguard"
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
	return sqlguard.Claim(ctx, r.db, namedLock("txcoord-"+strconv.FormatUint(h.Sum64(), 16)), owner, sqlguard.Where{Adapter: "mysql", Resource: r.name, Database: r.database})
}

// namedLock is a GET_LOCK lock.
type namedLock string

func (n namedLock) Try(ctx context.Context, conn *sql.Conn) (bool, error) {
	var got sql.NullInt64
	err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", string(n)).Scan(&got)
	return got.Valid && got.Int64 == 1, err
}

func (n namedLock) Held(ctx context.Context, conn *sql.Conn) (bool, error) {
	var mine sql.NullInt64
	err := conn.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?) = CONNECTION_ID()", string(n)).Scan(&mine)
	return mine.Valid && mine.Int64 == 1, err
}

func (n namedLock) Unlock(ctx context.Context, conn *sql.Conn) error {
	_, err := conn.ExecContext(ctx, "DO RELEASE_LOCK(?)", string(n))
	return err
}
