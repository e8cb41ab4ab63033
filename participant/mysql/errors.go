// Server errors the adapter tells apart, and connections it gives up.

package mysql

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"syscall"

	gomysql "github.com/go-sql-driver/mysql"
)

// MySQL and MariaDB error numbers the adapter tells apart.
const (
	erNotA           = 1397 // XAER_NOTA: unknown XID
	erInval          = 1398 // XAER_INVAL
	erRMFail         = 1399 // XAER_RMFAIL: wrong state for the command
	erOutside        = 1400 // XAER_OUTSIDE: work done outside the global transaction
	erRMErr          = 1401 // XAER_RMERR: the branch was rolled back after an error
	erRBRollback     = 1402 // XA_RBROLLBACK
	erDupID          = 1440 // XAER_DUPID: the XID already exists
	erRBTimeout      = 1613 // XA_RBTIMEOUT
	erRBDeadlock     = 1614 // XA_RBDEADLOCK
	erLockDeadlock   = 1213 // ER_LOCK_DEADLOCK
	erLockWait       = 1205 // ER_LOCK_WAIT_TIMEOUT
	erServerShutdown = 1053 // ER_SERVER_SHUTDOWN
	erConnKilled     = 1927 // ER_CONNECTION_KILLED (MariaDB)
	erQueryKilled    = 1317 // ER_QUERY_INTERRUPTED
)

// errNumber returns the server error number in err's chain, or 0.
func errNumber(err error) uint16 {
	var me *gomysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// rolledBackByServer reports an error after which the server has rolled
// the branch back (or marked it rollback-only).
func rolledBackByServer(err error) bool {
	switch errNumber(err) {
	case erRMErr, erRBRollback, erRBTimeout, erRBDeadlock, erLockDeadlock:
		return true
	}
	return false
}

// outcomeUnknown reports whether err leaves open whether the server ran
// the statement.
func outcomeUnknown(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || connLost(err)
}

// connLost reports whether err is not an error reply from a live session.
func connLost(err error) bool {
	switch errNumber(err) {
	case 0:
		return true
	case erServerShutdown, erConnKilled:
		return true
	}
	return false
}

// discard closes conn without returning it to the pool: its session may
// hold an ACTIVE, IDLE or PREPARED branch. Closing the session rolls back
// one that was not prepared and detaches one that was.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}

// Unreachable reports whether err says the server cannot be reached now.
func Unreachable(err error) bool {
	var ne net.Error
	switch {
	case err == nil:
		return false
	case errors.As(err, &ne), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, gomysql.ErrInvalidConn),
		errors.Is(err, driver.ErrBadConn):
		return true
	}
	switch errNumber(err) {
	case erServerShutdown, erConnKilled, 1040: // 1040: too many connections
		return true
	}
	return false
}
