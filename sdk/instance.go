package sdk

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/participant/mysql"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// A participant serves one coordinator instance: the coordinator id
// (owner), the log it decides in, and the latest run of that log it has
// seen (epoch). The first instance it meets, in an answer (Announce,
// RegisterBranch, GetOutcome) or a call (Commit, Rollback, Prepare,
// ListPrepared), is recorded in the service's own database, in
// ServedTable, and survives restarts. From then on:
//   - its requests name that instance, and another instance with the same
//     id refuses them (FAILED_PRECONDITION): a branch is never registered
//     with it, and it never answers an outcome;
//   - calls from another instance with the same id, or from an older run of
//     the same log, are refused (FAILED_PRECONDITION), and so are its
//     answers;
//   - a later run of the same log is accepted and recorded.
//
// Two coordinators with one id would each take the other's prepared
// branches for their own, roll them back at recovery, or answer "aborted"
// for a transaction the other committed. A coordinator whose log has no id
// (the in-memory log) names no instance and is not checked.
//
// To move a participant to a new coordinator log on purpose (the old one is
// gone for good and its branches are settled), delete its row:
//
//	DELETE FROM txcoord_served WHERE participant = '<name>';

// ServedTable is the table, in the participant's database, that records
// the coordinator instance each participant of that database serves.
const ServedTable = "txcoord_served"

// ErrOtherInstance reports a coordinator instance other than the one this
// participant serves, with the same coordinator id (or an older run of
// it).
var ErrOtherInstance = errors.New("sdk: another coordinator instance with the id this participant serves")

// served is the instance a participant serves.
type served struct {
	mu     sync.Mutex
	loaded bool
	owner  string
	logID  string
	epoch  uint64
}

// servedSQL is ServedTable's statements in one database's dialect.
type servedSQL struct {
	ddl, read, insert, update string
	// updateArgs are update's arguments.
	updateArgs func(participant string, epoch int64) []any
}

var (
	servedPostgres = servedSQL{
		ddl: `CREATE TABLE IF NOT EXISTS ` + ServedTable + ` (
	participant text PRIMARY KEY,
	owner text NOT NULL,
	log_id text NOT NULL,
	epoch bigint NOT NULL,
	seen_at timestamptz NOT NULL DEFAULT now())`,
		read:       `SELECT owner, log_id, epoch FROM ` + ServedTable + ` WHERE participant = $1`,
		insert:     `INSERT INTO ` + ServedTable + ` (participant, owner, log_id, epoch) VALUES ($1, $2, $3, $4) ON CONFLICT (participant) DO NOTHING`,
		update:     `UPDATE ` + ServedTable + ` SET epoch = $2, seen_at = now() WHERE participant = $1 AND epoch < $2`,
		updateArgs: func(participant string, epoch int64) []any { return []any{participant, epoch} },
	}
	servedMySQL = servedSQL{
		ddl: `CREATE TABLE IF NOT EXISTS ` + ServedTable + ` (
	participant varchar(64) NOT NULL PRIMARY KEY,
	owner varchar(200) NOT NULL,
	log_id varchar(200) NOT NULL,
	epoch bigint NOT NULL,
	seen_at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB`,
		read:       `SELECT owner, log_id, epoch FROM ` + ServedTable + ` WHERE participant = ?`,
		insert:     `INSERT IGNORE INTO ` + ServedTable + ` (participant, owner, log_id, epoch) VALUES (?, ?, ?, ?)`,
		update:     `UPDATE ` + ServedTable + ` SET epoch = ?, seen_at = NOW(6) WHERE participant = ? AND epoch < ?`,
		updateArgs: func(participant string, epoch int64) []any { return []any{epoch, participant, epoch} },
	}
)

// servedSQL returns ServedTable's statements for the participant's database.
func (p *Participant) servedSQL() servedSQL {
	if _, ok := p.res.(*mysql.Resource); ok {
		return servedMySQL
	}
	return servedPostgres
}

func (p *Participant) servedDDL() string { return p.servedSQL().ddl }

// loadLocked reads the recorded instance once, creating the table if it is
// missing. p.inst.mu is held.
func (p *Participant) loadLocked(ctx context.Context) error {
	if p.inst.loaded {
		return nil
	}
	db := p.res.DB()
	if _, err := db.ExecContext(ctx, p.servedDDL()); err != nil {
		return fmt.Errorf("sdk: %s: create %s (it records the coordinator this participant serves; run %q as its owner): %w", p.cfg.Name, ServedTable, p.servedDDL(), err)
	}
	var epoch int64
	err := db.QueryRowContext(ctx, p.servedSQL().read, p.cfg.Name).
		Scan(&p.inst.owner, &p.inst.logID, &epoch)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return fmt.Errorf("sdk: %s: read %s: %w", p.cfg.Name, ServedTable, err)
	default:
		p.inst.epoch = uint64(epoch)
	}
	p.inst.loaded = true
	return nil
}

// expected is the instance this participant serves, for its requests, or
// nil if it has recorded none (or cannot read it now).
func (p *Participant) expected(ctx context.Context) *txcoordv1.Instance {
	p.inst.mu.Lock()
	defer p.inst.mu.Unlock()
	if err := p.loadLocked(ctx); err != nil || p.inst.logID == "" {
		return nil
	}
	return &txcoordv1.Instance{Owner: p.inst.owner, LogId: p.inst.logID, Epoch: p.inst.epoch}
}

// learn checks the instance of an answer or a call against the one this
// participant serves: the first one is recorded, a later run of it is
// recorded, another instance with the same owner, or an older run, is an
// error wrapping ErrOtherInstance. An instance with no log id is accepted.
func (p *Participant) learn(ctx context.Context, owner, logID string, epoch uint64) error {
	if logID == "" {
		return nil
	}
	p.inst.mu.Lock()
	defer p.inst.mu.Unlock()
	if err := p.loadLocked(ctx); err != nil {
		return err
	}
	db := p.res.DB()
	switch {
	case p.inst.logID == "":
		// The first: recorded, unless another process of this participant
		// recorded one meanwhile.
		if _, err := db.ExecContext(ctx, p.servedSQL().insert, p.cfg.Name, owner, logID, int64(epoch)); err != nil {
			return fmt.Errorf("sdk: %s: record the coordinator it serves: %w", p.cfg.Name, err)
		}
		p.inst.loaded = false
		if err := p.loadLocked(ctx); err != nil {
			return err
		}
		if p.inst.owner != owner || p.inst.logID != logID {
			return p.otherLocked(owner, logID, epoch)
		}
		p.logger.Info("serving coordinator", "owner", owner, "log", logID, "epoch", epoch)
		return nil
	case p.inst.owner != owner:
		return p.otherLocked(owner, logID, epoch)
	case p.inst.logID != logID, epoch < p.inst.epoch:
		return p.otherLocked(owner, logID, epoch)
	case epoch > p.inst.epoch:
		q := p.servedSQL()
		if _, err := db.ExecContext(ctx, q.update, q.updateArgs(p.cfg.Name, int64(epoch))...); err != nil {
			return fmt.Errorf("sdk: %s: record the coordinator's run %d: %w", p.cfg.Name, epoch, err)
		}
		p.inst.epoch = epoch
	}
	return nil
}

// otherLocked is the refusal of an instance that is not the one served.
func (p *Participant) otherLocked(owner, logID string, epoch uint64) error {
	err := fmt.Errorf("%w: %s serves coordinator %s (log %s, run %d); refused coordinator %s (log %s, run %d). If the served log is gone for good and its branches are settled, delete %s's row in %s",
		ErrOtherInstance, p.cfg.Name, p.inst.owner, p.inst.logID, p.inst.epoch, owner, logID, epoch, p.cfg.Name, ServedTable)
	p.logger.Error("a coordinator instance other than the one served", "err", err)
	return err
}

// learnAnswer checks the instance of a coordinator's answer.
func (p *Participant) learnAnswer(ctx context.Context, inst *txcoordv1.Instance) error {
	return p.learn(ctx, inst.GetOwner(), inst.GetLogId(), inst.GetEpoch())
}

// admit checks the instance a coordinator's call names in its metadata;
// a refusal is FAILED_PRECONDITION.
func (p *Participant) admit(ctx context.Context) error {
	vals := metadata.ValueFromIncomingContext(ctx, remote.InstanceMetadataKey)
	if len(vals) == 0 {
		return nil // a coordinator that names no instance
	}
	owner, logID, epoch, err := remote.ParseInstance(vals[0])
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if err := p.learn(ctx, owner, logID, epoch); err != nil {
		if errors.Is(err, ErrOtherInstance) {
			return status.Error(codes.FailedPrecondition, err.Error())
		}
		return status.Error(codes.Unavailable, err.Error())
	}
	return nil
}
