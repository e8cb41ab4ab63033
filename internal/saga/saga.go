package saga

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/txcoord/txcoord/internal/backoff"
)

// Step changes one account's balance by Delta at database DB. An Account
// of -1 is a closed account: the step fails (a business failure).
type Step struct {
	DB      int   `json:"db"`
	Account int64 `json:"account"`
	Delta   int64 `json:"delta"`
}

// Plan is a saga's steps, run in order and compensated in reverse.
type Plan struct {
	Steps []Step `json:"steps"`
}

// ErrAborted reports a saga that failed and was compensated.
var ErrAborted = errors.New("saga: aborted and compensated")

// ErrClosedAccount is the business failure of a step on a closed account.
var ErrClosedAccount = errors.New("saga: the account refuses the transfer")

// Schema creates the step marker table a database needs.
const Schema = `CREATE TABLE IF NOT EXISTS saga_steps (
	saga_id uuid NOT NULL,
	step int NOT NULL,
	state text NOT NULL,
	PRIMARY KEY (saga_id, step))`

// Orchestrator runs sagas over a set of databases.
type Orchestrator struct {
	log   *Log
	dbs   []*sql.DB
	retry backoff.Policy
}

// New returns an orchestrator logging to log; dbs are indexed by Step.DB.
func New(log *Log, dbs []*sql.DB) *Orchestrator {
	return &Orchestrator{log: log, dbs: dbs, retry: backoff.Policy{Base: 10 * time.Millisecond, Max: time.Second}}
}

// Result tells when a saga's first and last steps committed: between them
// its changes are partly visible.
type Result struct {
	FirstCommit, LastCommit time.Time
	Compensated             int           // compensations that undid a step
	MaxHold                 time.Duration // the longest local transaction (row locks are held that long)
}

// Run runs the plan. nil: every step committed. ErrAborted (wrapping the
// step's error): a step failed and every step that may have run was
// compensated. Compensation is retried until it is done or ctx ends (then
// Recover finishes it).
func (o *Orchestrator) Run(ctx context.Context, plan Plan) (Result, error) {
	var res Result
	id := uuid.Must(uuid.NewV7())
	if err := o.log.put(ctx, id, record{Plan: plan}, true); err != nil {
		return res, fmt.Errorf("saga: log start: %w", err)
	}
	failed, ferr := -1, error(nil)
	for i, st := range plan.Steps {
		t0 := time.Now()
		err := o.do(ctx, id, i, st)
		res.MaxHold = max(res.MaxHold, time.Since(t0))
		if err != nil {
			failed, ferr = i, err
			break
		}
		now := time.Now()
		if res.FirstCommit.IsZero() {
			res.FirstCommit = now
		}
		res.LastCommit = now
	}
	if failed < 0 {
		return res, o.log.end(id)
	}
	n, err := o.compensate(ctx, id, plan, failed)
	res.Compensated = n
	if n > 0 {
		res.LastCommit = time.Now()
	}
	if err != nil {
		return res, fmt.Errorf("saga %s: step %d failed (%v); compensation unfinished: %w", id, failed, ferr, err)
	}
	return res, fmt.Errorf("%w: step %d: %w", ErrAborted, failed, ferr)
}

// compensate logs that the saga is aborting, then undoes steps upto..0 in
// reverse (the failed step too: its commit may have happened unseen),
// retrying each until done.
func (o *Orchestrator) compensate(ctx context.Context, id uuid.UUID, plan Plan, upto int) (int, error) {
	if err := o.log.put(ctx, id, record{Plan: plan, Aborting: true}, true); err != nil {
		return 0, fmt.Errorf("saga: log abort: %w", err)
	}
	undone := 0
	for i := upto; i >= 0; i-- {
		for attempt := 1; ; attempt++ {
			did, err := o.undo(ctx, id, i, plan.Steps[i])
			if err == nil {
				if did {
					undone++
				}
				break
			}
			t := time.NewTimer(o.retry.Delay(attempt, nil))
			select {
			case <-ctx.Done():
				t.Stop()
				return undone, ctx.Err()
			case <-t.C:
			}
		}
	}
	return undone, o.log.end(id)
}

// do runs step i as a local transaction, once: a marker row makes a
// redelivered step, or one already compensated, a no-op.
func (o *Orchestrator) do(ctx context.Context, id uuid.UUID, i int, st Step) error {
	tx, err := o.dbs[st.DB].BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	r, err := tx.ExecContext(ctx, `INSERT INTO saga_steps (saga_id, step, state) VALUES ($1, $2, 'done') ON CONFLICT DO NOTHING`, id, i)
	if err != nil {
		return err
	}
	if n, _ := r.RowsAffected(); n == 0 {
		var state string
		if err := tx.QueryRowContext(ctx, `SELECT state FROM saga_steps WHERE saga_id = $1 AND step = $2`, id, i).Scan(&state); err != nil {
			return err
		}
		if state != "done" {
			return fmt.Errorf("saga: step %d was compensated before it ran", i)
		}
		return nil
	}
	r, err = tx.ExecContext(ctx, `UPDATE accounts SET balance = balance + $1 WHERE id = $2`, st.Delta, st.Account)
	if err != nil {
		return err
	}
	if n, _ := r.RowsAffected(); n != 1 {
		return ErrClosedAccount
	}
	return tx.Commit()
}

// undo compensates step i if it ran, and in any case leaves a marker that
// stops it from running later. It reports whether it undid anything.
func (o *Orchestrator) undo(ctx context.Context, id uuid.UUID, i int, st Step) (bool, error) {
	tx, err := o.dbs[st.DB].BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	r, err := tx.ExecContext(ctx, `UPDATE saga_steps SET state = 'undone' WHERE saga_id = $1 AND step = $2 AND state = 'done'`, id, i)
	if err != nil {
		return false, err
	}
	did := false
	if n, _ := r.RowsAffected(); n == 1 {
		if _, err := tx.ExecContext(ctx, `UPDATE accounts SET balance = balance - $1 WHERE id = $2`, st.Delta, st.Account); err != nil {
			return false, err
		}
		did = true
	} else if _, err := tx.ExecContext(ctx, `INSERT INTO saga_steps (saga_id, step, state) VALUES ($1, $2, 'undone') ON CONFLICT DO NOTHING`, id, i); err != nil {
		return false, err
	}
	return did, tx.Commit()
}

// Recover finishes every saga the log holds: aborting ones are
// compensated; the others run forward again (steps are idempotent) and are
// compensated if a step fails. It returns how many sagas it finished.
func (o *Orchestrator) Recover(ctx context.Context) (int, error) {
	pending, err := o.log.pending()
	if err != nil {
		return 0, err
	}
	n := 0
	for id, r := range pending {
		uid := uuid.UUID(id)
		if r.Aborting {
			if _, err := o.compensate(ctx, uid, r.Plan, len(r.Plan.Steps)-1); err != nil {
				return n, err
			}
			n++
			continue
		}
		failed := -1
		for i, st := range r.Plan.Steps {
			if err := o.do(ctx, uid, i, st); err != nil {
				failed = i
				break
			}
		}
		if failed < 0 {
			if err := o.log.end(id); err != nil {
				return n, err
			}
		} else if _, err := o.compensate(ctx, uid, r.Plan, failed); err != nil {
			return n, err
		}
		n++
	}
	return n, o.log.write(ctx, nil)
}
