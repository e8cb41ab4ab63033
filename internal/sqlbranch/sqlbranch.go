// Package sqlbranch is what the SQL participants' branches share: the
// statements of one transaction's work on its pinned connection, one call
// at a time, with the first error they returned remembered (a branch that
// saw an error votes no).
package sqlbranch

import (
	"context"
	"database/sql"
	"errors"
)

// Kind tells a statement method's hook which method ran.
type Kind int

const (
	// Exec is ExecContext.
	Exec Kind = iota
	// Query is QueryContext or QueryRowContext.
	Query
)

// Stmts runs a branch's statements. The zero value is not usable; call
// Init.
type Stmts struct {
	mu   chan struct{}
	conn *sql.Conn
	err  error
	// open returns nil while the branch takes statements, else why not
	// (the branch is finished). Called with the lock held.
	open func() error
	// ran is told of every statement run, with the lock held.
	ran func(k Kind, query string, res sql.Result, err error)
}

// Init readies s for the connection conn; open and ran are as in Stmts
// (ran may be nil).
func (s *Stmts) Init(conn *sql.Conn, open func() error, ran func(k Kind, query string, res sql.Result, err error)) {
	s.mu = make(chan struct{}, 1)
	s.conn, s.open, s.ran = conn, open, ran
}

// Lock takes the branch, honouring ctx while another call holds it. A free
// branch is taken even if ctx is done, so that clean-up calls with a dead
// context still run.
func (s *Stmts) Lock(ctx context.Context) error {
	select {
	case s.mu <- struct{}{}:
		return nil
	default:
	}
	select {
	case s.mu <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Unlock releases the branch.
func (s *Stmts) Unlock() { <-s.mu }

// FirstErr returns the first error a statement returned. The lock is held.
func (s *Stmts) FirstErr() error { return s.err }

// Err returns the first error a statement returned, or nil.
func (s *Stmts) Err() error {
	if s.Lock(context.Background()) != nil {
		return nil
	}
	defer s.Unlock()
	return s.err
}

func (s *Stmts) see(err error) {
	if err != nil && s.err == nil {
		s.err = err
	}
}

// ExecContext runs a statement in the branch.
func (s *Stmts) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if err := s.Lock(ctx); err != nil {
		return nil, err
	}
	defer s.Unlock()
	if err := s.open(); err != nil {
		return nil, err
	}
	res, err := s.conn.ExecContext(ctx, query, args...)
	s.see(err)
	if s.ran != nil {
		s.ran(Exec, query, res, err)
	}
	return res, err
}

// QueryContext runs a query in the branch. Errors met while reading the
// rows are not recorded; close the rows before Prepare.
func (s *Stmts) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if err := s.Lock(ctx); err != nil {
		return nil, err
	}
	defer s.Unlock()
	if err := s.open(); err != nil {
		return nil, err
	}
	rows, err := s.conn.QueryContext(ctx, query, args...)
	s.see(err)
	if s.ran != nil {
		s.ran(Query, query, nil, err)
	}
	return rows, err
}

// Row is the result of QueryRowContext. Its Scan records errors in the
// branch, except sql.ErrNoRows.
type Row struct {
	s   *Stmts
	row *sql.Row
	err error
}

// QueryRowContext runs a query expected to return at most one row.
func (s *Stmts) QueryRowContext(ctx context.Context, query string, args ...any) *Row {
	if err := s.Lock(ctx); err != nil {
		return &Row{s: s, err: err}
	}
	defer s.Unlock()
	if err := s.open(); err != nil {
		return &Row{s: s, err: err}
	}
	row := s.conn.QueryRowContext(ctx, query, args...)
	s.see(row.Err())
	if s.ran != nil {
		s.ran(Query, query, nil, row.Err())
	}
	return &Row{s: s, row: row, err: row.Err()}
}

// Scan copies the row's columns into dest, as sql.Row.Scan does.
func (r *Row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	err := r.row.Scan(dest...)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		if r.s.Lock(context.Background()) == nil {
			r.s.see(err)
			r.s.Unlock()
		}
	}
	return err
}

// Err returns the query's error, if any, without scanning.
func (r *Row) Err() error { return r.err }
