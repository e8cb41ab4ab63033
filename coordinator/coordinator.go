// Package coordinator is the two-phase commit coordinator as a library:
// begin a global transaction, enlist a branch at each resource, do the work,
// and commit atomically, with presumed abort, group-committed decisions and
// recovery after a crash.
//
//	c, err := coordinator.New(ctx, coordinator.Config{ID: "orders-1", Log: log, Resources: []participant.Resource{a, b}})
//	tx, err := c.Begin(ctx)
//	ba, err := a.Enlist(ctx, tx) // a *postgres.Resource: ba is a pinned connection
//	... ba.ExecContext(ctx, "UPDATE ...")
//	err = tx.Commit(ctx)
//	switch coordinator.OutcomeOf(err) { case coordinator.Committed: ...; case coordinator.Aborted: ...; case coordinator.Unknown: ... }
//
// The protocol itself is the pure state machine in package protocol; this
// package performs its effects.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/txcoord/txcoord/coordinator/protocol"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/backoff"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/recovery"
	"github.com/txcoord/txcoord/wal"
)

// Config configures a coordinator.
type Config struct {
	// ID is the coordinator id in every gid it issues: [A-Za-z0-9_-], unique
	// among coordinators sharing a database. Required.
	ID string
	// Prefix starts every gid (default ids.DefaultPrefix).
	Prefix string
	// Log is the decision log. Required. The coordinator does not close it.
	Log wal.Log
	// Resources are every resource a transaction may enlist; recovery scans
	// them. Names must be unique.
	Resources []participant.Resource
	// PrepareTimeout bounds phase one (default 10s). The caller's context
	// deadline bounds it too.
	PrepareTimeout time.Duration
	// CallTimeout bounds each phase-two or rollback call (default 30s).
	CallTimeout time.Duration
	// RetryBase and RetryMax shape phase-two retries: capped exponential
	// backoff with jitter (defaults 10ms and 5s). Phase two never gives up.
	RetryBase, RetryMax time.Duration
	// InDoubtTimeout: a prepared branch of ours that no live transaction
	// owns is resolved by the periodic recovery pass once older than this,
	// and any prepared branch older than this is reported (default 1m).
	InDoubtTimeout time.Duration
	// KeepEnded is how long a finished decision stays in the log after its
	// END before compaction removes it (default 1h): until then the log
	// still answers "committed" for it. A transaction begun longer ago than
	// this with no decision record is reported as forgotten (unknown), not
	// aborted.
	KeepEnded time.Duration
	// RecoveryInterval is the period of the recovery loop (default 10s);
	// negative disables the loop.
	RecoveryInterval time.Duration
	// RecoveryBudget bounds one recovery pass (default twice CallTimeout):
	// what it has not reached by then waits for the next pass.
	RecoveryBudget time.Duration
	// SkipStartupRecovery leaves the start-up pass to the caller (Recover).
	SkipStartupRecovery bool
	// OwnerWait bounds how long New waits to claim the coordinator id at
	// each resource that can guard it (participant.Guard; PostgreSQL does,
	// with an advisory lock), while another process holds it (default 10s):
	// a previous process that was just killed may take a moment to let go.
	OwnerWait time.Duration
	// Logger receives structured logs (default: discard).
	Logger *slog.Logger
	// Seed seeds retry jitter (0: random).
	Seed uint64
	// Observe, if set, is called as each phase of a transaction ends, with
	// its duration and error (for latency metrics). It runs on the
	// coordinator's goroutines and must not block.
	Observe func(p Phase, d time.Duration, err error)
	// Tracer makes a span for the prepare, decision and commit phases of
	// each transaction, children of the span in Commit's context (default:
	// no spans).
	Tracer trace.Tracer
	// Holder names the registered resource that holds the commit decision
	// of every transaction with a branch at it (a decision holder, see
	// WithHolder): its one-phase commit is the commit point and nothing is
	// forced to the log. It must be a participant.DecisionHolder (a
	// PostgreSQL resource); New makes sure it can keep decisions. Empty:
	// every transaction logs its decision.
	Holder string
	// ForgetInterval is how often the rows of finished holder decisions are
	// deleted, in one batch per holder (default 100ms).
	ForgetInterval time.Duration
}

// Phase names a phase of a transaction for Config.Observe.
type Phase string

const (
	// PhasePrepare: from the first PREPARE sent to the last vote (or the
	// prepare timeout).
	PhasePrepare Phase = "prepare"
	// PhaseDecision: writing the COMMIT record, until it is durable.
	PhaseDecision Phase = "decision"
	// PhaseCommit: from the first phase-two COMMIT to the last
	// acknowledgement, retries included.
	PhaseCommit Phase = "commit"
)

// Coordinator runs global transactions. It is safe for concurrent use.
type Coordinator struct {
	cfg       Config
	log       wal.Log
	resMu     sync.RWMutex
	resources map[string]participant.Resource
	logger    *slog.Logger

	ctx    context.Context // lives until Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	claimOp sync.Mutex                   // one claim operation at a time (claims.go)
	claimMu sync.Mutex                   // guards claims and down
	claims  map[string]participant.Claim // owner claims at the resources that can guard the id
	down    map[string]error             // guarded resources whose claim is not held: unreachable
	started time.Time

	mu     sync.Mutex
	live   map[ids.TxID]*Tx
	closed bool
	failed error             // a decision write failed: no new commits
	stale  []recovery.Action // branches the last recovery pass left in doubt

	randMu sync.Mutex
	rand   *rand.Rand // per-transaction jitter seeds, only with Config.Seed

	passLock chan struct{} // held by a recovery pass or a heuristic decision (capacity 1)

	workers *workers // run participant calls

	tracing   bool                       // Config.Tracer was given: spans are made
	holder    participant.DecisionHolder // Config.Holder, or nil
	forgetter *forgetter
	// stopForgetter ends the forgetter after one last batch, and waits.
	stopForgetter func()
	usedMu        sync.Mutex
	used          map[string]participant.DecisionHolder // holders chosen by WithHolder this run

	stats counters

	hazardMu sync.Mutex
	hazards  map[ids.TxID]error // heuristic hazards seen this run, until an operator ends them

	aborted abortedSet // transactions this run aborted, for recovery
}

type counters struct {
	begun, committed, aborted, unknown, onePhase, retries atomic.Uint64
	held, fenced, forgotten                               atomic.Uint64
	hazards                                               atomic.Uint64
}

// Stats counts what a coordinator did since it started.
type Stats struct {
	Begun, Committed, Aborted, Unknown uint64
	OnePhase                           uint64 // single-branch commits without a log write
	Retries                            uint64 // phase-two commit retries
	// Held counts commits whose decision a holder keeps (no log write);
	// Fenced, holder commits whose lost reply a fence settled; Forgotten,
	// holder rows deleted once finished, and ForgetPending those waiting.
	Held, Fenced, Forgotten uint64
	ForgetPending           int
	// Hazards counts transactions found to be heuristic hazards (each
	// once per run); OpenHazards, those not yet ended by an operator.
	Hazards     uint64
	OpenHazards int
	Live        int
	Log         wal.Stats
}

// New starts a coordinator: it validates cfg, runs the start-up recovery
// pass (unless SkipStartupRecovery) and starts the recovery loop.
func New(ctx context.Context, cfg Config) (*Coordinator, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = ids.DefaultPrefix
	}
	if err := ids.ValidateName("prefix", cfg.Prefix); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if err := ids.ValidateName("coordinator id", cfg.ID); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	// The longest transaction part a gid can have must fit.
	probe := ids.GID{Prefix: cfg.Prefix, Coordinator: cfg.ID, TxID: ids.TxID{0x01}, Branch: "0"}
	if len(probe.GTRID()) > ids.MaxGTRIDLen {
		return nil, fmt.Errorf("%w: prefix %q and id %q make gids longer than %d bytes", ErrConfig, cfg.Prefix, cfg.ID, ids.MaxGTRIDLen)
	}
	if cfg.Log == nil {
		return nil, fmt.Errorf("%w: no log", ErrConfig)
	}
	if o, ok := cfg.Log.(interface{ Owner() string }); ok {
		if owner, want := o.Owner(), cfg.Prefix+"."+cfg.ID; owner != "" && owner != want {
			return nil, fmt.Errorf("%w: %w: the log belongs to %q, this coordinator is %q", ErrConfig, wal.ErrWrongOwner, owner, want)
		}
	}
	if cfg.PrepareTimeout <= 0 {
		cfg.PrepareTimeout = 10 * time.Second
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 30 * time.Second
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = backoff.Default.Base
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = backoff.Default.Max
	}
	if cfg.RetryMax < cfg.RetryBase {
		return nil, fmt.Errorf("%w: RetryMax %v is below RetryBase %v", ErrConfig, cfg.RetryMax, cfg.RetryBase)
	}
	if cfg.InDoubtTimeout <= 0 {
		cfg.InDoubtTimeout = time.Minute
	}
	if cfg.RecoveryInterval == 0 {
		cfg.RecoveryInterval = 10 * time.Second
	}
	if cfg.KeepEnded <= 0 {
		cfg.KeepEnded = time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	tracing := cfg.Tracer != nil
	if cfg.Tracer == nil {
		cfg.Tracer = noop.NewTracerProvider().Tracer("")
	}
	if cfg.OwnerWait <= 0 {
		cfg.OwnerWait = 10 * time.Second
	}
	if cfg.RecoveryBudget <= 0 {
		cfg.RecoveryBudget = 2 * cfg.CallTimeout
	}
	if cfg.ForgetInterval <= 0 {
		cfg.ForgetInterval = 100 * time.Millisecond
	}
	c := &Coordinator{
		cfg:       cfg,
		log:       cfg.Log,
		resources: map[string]participant.Resource{},
		logger:    cfg.Logger,
		live:      map[ids.TxID]*Tx{},
		claims:    map[string]participant.Claim{},
		down:      map[string]error{},
		started:   time.Now(),
		passLock:  make(chan struct{}, 1),
		tracing:   tracing,
	}
	for _, r := range cfg.Resources {
		if r == nil {
			return nil, fmt.Errorf("%w: nil resource", ErrConfig)
		}
		if err := ids.ValidateName("resource name", r.Name()); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrConfig, err)
		}
		if _, dup := c.resources[r.Name()]; dup {
			return nil, fmt.Errorf("%w: two resources named %q", ErrConfig, r.Name())
		}
		c.resources[r.Name()] = r
	}
	if cfg.Holder != "" {
		h, err := c.decisionHolder(cfg.Holder)
		if err != nil {
			return nil, err
		}
		if err := h.HolderReady(ctx); err != nil {
			return nil, fmt.Errorf("coordinator: decision holder %s: %w", cfg.Holder, err)
		}
		c.holder = h
		c.useHolder(h)
	}
	if err := c.claim(ctx); err != nil {
		return nil, err
	}
	if err := c.checkLogAge(ctx); err != nil {
		c.unclaim()
		return nil, err
	}
	if cfg.Seed != 0 {
		c.rand = rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.workers = newWorkers(c.ctx)
	c.forgetter = newForgetter(c, cfg.ForgetInterval)
	// The forgetter outlives the transactions' drivers: Close stops it
	// once they are done, so that its last batch has every END they wrote.
	stop, done := make(chan struct{}), make(chan struct{})
	c.stopForgetter = sync.OnceFunc(func() {
		close(stop)
		<-done
	})
	go func() {
		defer close(done)
		c.forgetter.run(c.ctx, stop)
	}()
	if !cfg.SkipStartupRecovery {
		_, err := c.recover(ctx, true)
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			// The pass ran out of its budget: what it did not reach is
			// left to the recovery loop. Branches of earlier runs are
			// resolved there without waiting for the in-doubt timeout.
			c.logger.Warn("start-up recovery pass ran out of its budget; the recovery loop goes on", "budget", cfg.RecoveryBudget)
			err = nil
		}
		if err != nil {
			c.cancel()
			c.wg.Wait()
			c.stopForgetter()
			c.unclaim()
			return nil, fmt.Errorf("coordinator: start-up recovery: %w", err)
		}
	}
	if cfg.RecoveryInterval > 0 {
		c.wg.Add(1)
		go c.recoveryLoop()
	}
	return c, nil
}

// Close stops the coordinator: new transactions are refused, phase-two
// retries stop (their decisions stay in the log and are driven again after
// a restart), and Close waits for every goroutine it owns. It does not close
// the log or the resources. Safe to call twice.
func (c *Coordinator) Close() error {
	c.mu.Lock()
	already := c.closed
	c.closed = true
	for _, t := range c.live {
		if t.stop != nil {
			t.stop() // its driver stops; phase two goes on after a restart
		}
	}
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	c.workers.wait()
	c.stopForgetter()
	if !already {
		// Not while a pass (Recover, ResolveHeuristic) checks the claims.
		c.passLock <- struct{}{}
		c.unclaim()
		<-c.passLock
	}
	return nil
}

// AddResource registers a resource after start, for participants that
// make themselves known while the coordinator runs (remote services).
// Adding the same resource again does nothing; another resource under a
// registered name is refused. Recovery scans it from its next pass. The
// coordinator id is not claimed at resources added this way.
func (c *Coordinator) AddResource(r participant.Resource) error {
	if r == nil {
		return fmt.Errorf("%w: nil resource", ErrConfig)
	}
	if err := ids.ValidateName("resource name", r.Name()); err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	c.resMu.Lock()
	defer c.resMu.Unlock()
	if old, ok := c.resources[r.Name()]; ok {
		if old == r {
			return nil
		}
		return fmt.Errorf("%w: another resource is already registered as %q", ErrConfig, r.Name())
	}
	c.resources[r.Name()] = r
	return nil
}

// Resource returns the registered resource with that name.
func (c *Coordinator) Resource(name string) (participant.Resource, bool) {
	c.resMu.RLock()
	defer c.resMu.RUnlock()
	r, ok := c.resources[name]
	return r, ok
}

// Resources lists the registered resources by name.
func (c *Coordinator) Resources() []participant.Resource { return c.resourceList() }

func (c *Coordinator) resourceList() []participant.Resource {
	c.resMu.RLock()
	defer c.resMu.RUnlock()
	rs := make([]participant.Resource, 0, len(c.resources))
	for _, r := range c.resources {
		rs = append(rs, r)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].Name() < rs[j].Name() })
	return rs
}

// Prefix returns the gid prefix.
func (c *Coordinator) Prefix() string { return c.cfg.Prefix }

// Log returns the coordinator's log.
func (c *Coordinator) Log() wal.Log { return c.log }

// Tx returns the live transaction with that id, if this run is driving it.
func (c *Coordinator) Tx(id ids.TxID) (*Tx, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.live[id]
	return t, ok
}

// InDoubt counts the decided transactions this run is not driving whose
// phase two is unfinished, and the prepared branches the last recovery pass
// left in doubt, with the age of the oldest of either.
func (c *Coordinator) InDoubt() (n int, oldest time.Duration) {
	now := time.Now()
	if pending, err := c.log.Pending(); err == nil {
		for _, d := range pending {
			if c.isLive(d.TxID) {
				continue
			}
			n++
			oldest = max(oldest, now.Sub(d.Time))
		}
	}
	c.mu.Lock()
	stale := c.stale
	c.mu.Unlock()
	for _, s := range stale {
		n++
		oldest = max(oldest, s.Age)
	}
	return n, oldest
}

// ID returns the coordinator id.
func (c *Coordinator) ID() string { return c.cfg.ID }

// Stats returns counters since start.
func (c *Coordinator) Stats() Stats {
	c.mu.Lock()
	n := len(c.live)
	c.mu.Unlock()
	return Stats{
		Begun: c.stats.begun.Load(), Committed: c.stats.committed.Load(), Aborted: c.stats.aborted.Load(),
		Unknown: c.stats.unknown.Load(), OnePhase: c.stats.onePhase.Load(),
		Retries: c.stats.retries.Load(), Live: n, Log: c.log.Stats(),
		Held: c.stats.held.Load(), Fenced: c.stats.fenced.Load(), Forgotten: c.stats.forgotten.Load(),
		ForgetPending: c.forgetter.pending(),
		Hazards:       c.stats.hazards.Load(), OpenHazards: c.openHazards(),
	}
}

// Begin starts a global transaction. Nothing is written. Options choose
// its decision holder (WithHolder, WithoutHolder); by default it is
// Config.Holder.
func (c *Coordinator) Begin(ctx context.Context, opts ...TxOption) (*Tx, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var o txOptions
	for _, opt := range opts {
		opt(&o)
	}
	holder := c.holder
	switch {
	case o.noHolder:
		holder = nil
	case o.holder != "":
		h, err := c.decisionHolder(o.holder)
		if err != nil {
			return nil, err
		}
		holder = h
		c.useHolder(h)
	}
	id, err := ids.NewTxID()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.failed != nil {
		return nil, fmt.Errorf("%w: %v", ErrLogFailed, c.failed)
	}
	t := &Tx{c: c, id: id, started: time.Now(), state: protocol.StateActive, done: make(chan struct{}), holder: holder, holderAt: -1}
	c.live[id] = t
	c.stats.begun.Add(1)
	return t, nil
}

// Do runs fn in a new transaction: it commits if fn returns nil and rolls
// back otherwise, returning fn's error wrapped in ErrAborted. The result
// follows Commit's rules (see OutcomeOf). If fn commits or rolls back the
// transaction itself and returns an error, that error is returned as is.
func (c *Coordinator) Do(ctx context.Context, fn func(ctx context.Context, tx *Tx) error, opts ...TxOption) error {
	tx, err := c.Begin(ctx, opts...)
	if err != nil {
		return err
	}
	if err := fn(ctx, tx); err != nil {
		rbErr := tx.Rollback(ctx)
		if errors.Is(rbErr, ErrTxDone) {
			// fn finished the transaction itself (it may have committed):
			// its error is the outcome, not an abort.
			return err
		}
		if rbErr != nil && !errors.Is(rbErr, ErrAborted) {
			return fmt.Errorf("%w: %w (rollback: %v)", ErrAborted, err, rbErr)
		}
		return fmt.Errorf("%w: %w", ErrAborted, err)
	}
	return tx.Commit(ctx)
}

func (c *Coordinator) isLive(id ids.TxID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.live[id]
	return ok
}

func (c *Coordinator) forget(t *Tx) {
	c.mu.Lock()
	delete(c.live, t.id)
	c.mu.Unlock()
}

func (c *Coordinator) fail(err error) {
	c.mu.Lock()
	if c.failed == nil {
		c.failed = err
	}
	c.mu.Unlock()
	c.logger.Error("coordinator: decision not durable; refusing new commits until restart", "err", err)
}

func (c *Coordinator) machineConfig() protocol.Config {
	cfg := protocol.Config{Backoff: backoff.Policy{Base: c.cfg.RetryBase, Max: c.cfg.RetryMax}}
	if c.rand != nil {
		// Reproducible jitter for tests; otherwise the global source.
		c.randMu.Lock()
		cfg.Rand = rand.New(rand.NewPCG(c.rand.Uint64(), c.rand.Uint64()))
		c.randMu.Unlock()
	}
	return cfg
}

// TxStatus describes a live transaction.
type TxStatus struct {
	TxID     ids.TxID
	Holder   string // the decision holder, if the transaction has one
	State    protocol.State
	Started  time.Time
	Branches []BranchStatus
	Retries  int
	Cause    error
}

// BranchStatus describes one branch of a live transaction.
type BranchStatus struct {
	Resource string
	GID      ids.GID
	State    protocol.BranchState
	Attempts int
	LastErr  error
}

// Transactions lists the live transactions, oldest first.
func (c *Coordinator) Transactions() []TxStatus {
	c.mu.Lock()
	txs := make([]*Tx, 0, len(c.live))
	for _, t := range c.live {
		txs = append(txs, t)
	}
	c.mu.Unlock()
	out := make([]TxStatus, 0, len(txs))
	for _, t := range txs {
		out = append(out, t.Status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out
}

// Recover runs a recovery pass now and reports what it did.
func (c *Coordinator) Recover(ctx context.Context) (*recovery.Report, error) {
	return c.recover(ctx, false)
}

func (c *Coordinator) recover(ctx context.Context, startup bool) (*recovery.Report, error) {
	unlock, err := c.lockPass(ctx, "recovery pass")
	if err != nil {
		return nil, err
	}
	defer unlock()
	// A pass has a time budget: a resource that hangs costs it at most
	// that, and holds no admin call longer.
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RecoveryBudget)
	defer cancel()
	down, err := c.checkClaims(ctx)
	if err != nil {
		c.logger.Error("recovery pass refused", "err", err)
		return nil, err
	}
	var rs []participant.Resource
	for _, r := range c.resourceList() {
		if _, isDown := down[r.Name()]; !isDown {
			rs = append(rs, r)
		}
	}
	cfg := recovery.Config{
		Prefix: c.cfg.Prefix, CoordinatorID: c.cfg.ID, Log: c.log, Resources: rs, Down: down,
		InDoubtTimeout: c.cfg.InDoubtTimeout, CallTimeout: c.cfg.CallTimeout, Logger: c.logger,
		RunStart: c.started, LogCreated: c.logCreated(),
	}
	if !startup {
		cfg.Live = c.isLive
		cfg.Aborted = c.aborted.has
	}
	rep, err := recovery.Pass(ctx, cfg)
	if rep != nil {
		for _, h := range rep.Hazards {
			c.hazard(h.TxID, h.Err)
		}
	}
	if err == nil {
		c.mu.Lock()
		c.stale = rep.Stale
		c.mu.Unlock()
		for _, s := range rep.Stale {
			c.logger.Warn("prepared branch in doubt", "resource", s.Resource, "gid", s.GID, "age", s.Age.Round(time.Second), "state", s.What, "err", s.Err)
		}
	}
	return rep, err
}

func (c *Coordinator) recoveryLoop() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.RecoveryInterval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
			if _, err := c.recover(c.ctx, false); err != nil && c.ctx.Err() == nil {
				c.logger.Warn("recovery pass failed", "err", err)
			}
			if _, err := c.log.Compact(c.ctx, time.Now().Add(-c.cfg.KeepEnded)); err != nil && c.ctx.Err() == nil {
				c.logger.Warn("log compaction failed", "err", err)
			}
		}
	}
}

// lockPass takes the lock of the work that resolves branches (a recovery
// pass, a heuristic decision) and returns its unlock. It refuses once the
// log has failed (its contents are unknown: presumed abort is unsafe) or
// Close was called (the coordinator no longer holds its id).
func (c *Coordinator) lockPass(ctx context.Context, what string) (unlock func(), err error) {
	c.mu.Lock()
	failed := c.failed
	c.mu.Unlock()
	if failed != nil {
		return nil, fmt.Errorf("%w: %v", ErrLogFailed, failed)
	}
	select {
	case c.passLock <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("coordinator: %s: a recovery pass or heuristic decision is running (bounded by the recovery budget, %v); try again: %w", what, c.cfg.RecoveryBudget, ctx.Err())
	}
	unlock = func() { <-c.passLock }
	if c.isClosed() {
		unlock()
		return nil, fmt.Errorf("coordinator: %s: %w", what, ErrClosed)
	}
	return unlock, nil
}

// isClosed reports whether Close was called.
func (c *Coordinator) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}
