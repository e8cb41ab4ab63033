// Package server serves a coordinator over gRPC: remote participants
// (services using package sdk) join global transactions that clients
// (package client) begin, commit and roll back, and operators inspect and
// resolve.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/coordinator/protocol"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// Config configures a Server.
type Config struct {
	// Coordinator runs the transactions. Required. Its resources (for
	// example PostgreSQL databases) keep their names; remote participants
	// are added as they register or announce themselves.
	Coordinator *coordinator.Coordinator
	// TxTimeout: a transaction neither committed nor rolled back this long
	// after Begin is rolled back (default 1m). A Begin may ask for less or
	// more, up to MaxTxTimeout (default 10m).
	TxTimeout, MaxTxTimeout time.Duration
	// Retain is how long a finished transaction is remembered to answer a
	// repeated Commit or Rollback (default 10m); after that the log answers.
	Retain time.Duration
	// MaxRetained caps the finished transactions remembered (default
	// 100,000): past it the oldest are forgotten before Retain, so memory
	// stays bounded at any rate of transactions.
	MaxRetained int
	// SettleAfter is how long after its outcome a remembered transaction
	// keeps its full state (default 5s); then, once the coordinator is
	// done with it, only its status and outcome are kept.
	SettleAfter time.Duration
	// DialOptions are used to call remote participants (give transport
	// credentials).
	DialOptions []grpc.DialOption
	// ParticipantDial, if set, gives options for calls to one participant
	// before DialOptions: for example TLS that checks the certificate
	// carries the identity bound to that name.
	ParticipantDial func(name string) []grpc.DialOption
	// Logger receives structured logs (default: discard).
	Logger *slog.Logger
	// Tracer makes a span per Begin (default: none).
	Tracer trace.Tracer
	// Authorizer checks every call (package authz: the trust model).
	// Required: authz.Insecure() admits every caller.
	Authorizer *authz.Authorizer
	// MaxParticipants caps the remote participants known (default 1000):
	// a new name past it is refused.
	MaxParticipants int
	// MaxLivePerIdentity caps the live transactions one identity has
	// begun (default 10000).
	MaxLivePerIdentity int
	// MaxBranches caps the branches registered with one transaction
	// (default 256).
	MaxBranches int
}

// Server implements the Coordinator gRPC service.
type Server struct {
	txcoordv1.UnimplementedCoordinatorServer
	cfg    Config
	c      *coordinator.Coordinator
	logger *slog.Logger

	mu      sync.Mutex
	txs     map[ids.TxID]*entry
	remotes []*remote.Resource // made by AddParticipant; closed by Close
	closed  bool               // Close ran: AddParticipant refuses
	// reportKeys are the report keys each remote participant gave, the
	// newest last (reported.go).
	reportKeys map[string][][]byte
	live       map[string]int // unfinished transactions by owner
	// done lists the finished transactions still in txs, oldest first:
	// forgetting them looks at its head only. Its first nSettled were
	// looked at by settle.
	done     []finished
	nSettled int

	starting atomic.Bool // the start-up recovery pass runs: transaction calls wait
}

// Starting marks the server as running its start-up recovery pass: Begin,
// RegisterBranch, Commit and Rollback answer UNAVAILABLE until Ready, while
// the admin calls, GetOutcome and Announce are served.
func (s *Server) Starting() { s.starting.Store(true) }

// Ready ends Starting.
func (s *Server) Ready() { s.starting.Store(false) }

// notReady is the answer to a transaction call while the server starts.
func (s *Server) notReady() error {
	if s.starting.Load() {
		return status.Error(codes.Unavailable, "txcoord is starting: its start-up recovery pass is running; try again")
	}
	return nil
}

// entry is a transaction begun through the server.
type entry struct {
	id ids.TxID
	// tx is the transaction until settle replaces it with what it ended
	// as (guarded by Server.mu; read it with txOf).
	tx       *coordinator.Tx
	settled  *settledTx
	owner    string      // the identity that began it
	branches int         // registered through RegisterBranch, or reported
	rolled   bool        // rollback asked (request or timeout): Commit is refused
	why      string      // why Commit rolled it back (a reported branch that could not join), if it did
	commit   bool        // commit asked: rollbacks wait for its outcome
	finished time.Time   // when the outcome became known (zero before)
	timer    *time.Timer // rolls it back at its deadline
}

// settledTx is what a finished transaction ended as: all the server keeps
// of it once the coordinator is done with it. It holds no pointer but its
// result's text, so that remembering many (MaxRetained) costs about a
// hundred bytes each and next to no garbage-collector work: keeping the
// whole status (branches, gids, the errors' chains) made the server's CPU
// per transaction grow by 1.44x over a 10-minute load.
type settledTx struct {
	state   protocol.State
	started int64 // Unix nanoseconds
	retries int32
	result  settledError
}

// settledError is a finished transaction's result, kept as its text and
// the coordinator's errors it matched (errors.Is answers for them alone).
type settledError struct {
	is  uint16 // bit i: errors.Is(result, settledSentinels[i])
	msg string
	set bool // the result was an error
}

// settledSentinels are the errors a settled result still answers
// errors.Is for: those the server's answers depend on.
var settledSentinels = []error{coordinator.ErrAborted, coordinator.ErrCommitPending, coordinator.ErrHeuristicHazard,
	coordinator.ErrOutcomeUnknown, coordinator.ErrTxDone, coordinator.ErrClosed, coordinator.ErrLogFailed, coordinator.ErrPresumedAborted}

func settledResult(err error) settledError {
	if err == nil {
		return settledError{}
	}
	e := settledError{msg: err.Error(), set: true}
	for i, s := range settledSentinels {
		if errors.Is(err, s) {
			e.is |= 1 << i
		}
	}
	return e
}

// err returns the result as an error: nil for none.
func (e settledError) err() error {
	if !e.set {
		return nil
	}
	return &e
}

func (e *settledError) Error() string { return e.msg }

func (e *settledError) Is(target error) bool {
	for i, s := range settledSentinels {
		if target == s {
			return e.is&(1<<i) != 0
		}
	}
	return false
}

// status is what the transaction's status said when it settled, without
// its branches.
func (t *settledTx) status(id ids.TxID) coordinator.TxStatus {
	return coordinator.TxStatus{TxID: id, State: t.state, Started: time.Unix(0, t.started), Retries: int(t.retries)}
}

// txOf returns e's transaction, or what it settled as.
func (s *Server) txOf(e *entry) (*coordinator.Tx, *settledTx) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return e.tx, e.settled
}

// finalOf returns what a tracked transaction the coordinator no longer
// runs ended as.
func (s *Server) finalOf(e *entry) (coordinator.TxStatus, error) {
	tx, settled := s.txOf(e)
	if tx == nil {
		return settled.status(e.id), settled.result.err()
	}
	return tx.Status(), tx.Result()
}

// finished is a finished transaction in Server.done.
type finished struct {
	id ids.TxID
	at time.Time
}

// New returns a server for cfg.Coordinator.
func New(cfg Config) (*Server, error) {
	if cfg.Coordinator == nil {
		return nil, errors.New("server: no coordinator")
	}
	if cfg.TxTimeout <= 0 {
		cfg.TxTimeout = time.Minute
	}
	if cfg.MaxTxTimeout <= 0 {
		cfg.MaxTxTimeout = 10 * time.Minute
	}
	if cfg.MaxTxTimeout < cfg.TxTimeout {
		return nil, fmt.Errorf("server: the longest transaction timeout %v is below the default %v", cfg.MaxTxTimeout, cfg.TxTimeout)
	}
	if cfg.Retain <= 0 {
		cfg.Retain = 10 * time.Minute
	}
	if cfg.MaxRetained <= 0 {
		cfg.MaxRetained = 100_000
	}
	if cfg.SettleAfter <= 0 {
		cfg.SettleAfter = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Tracer == nil {
		cfg.Tracer = noop.NewTracerProvider().Tracer("")
	}
	if cfg.Authorizer == nil {
		return nil, errors.New("server: no Authorizer: every call must be checked (give authz.New(...), or authz.Insecure() to admit every caller)")
	}
	if cfg.MaxParticipants <= 0 {
		cfg.MaxParticipants = 1000
	}
	if cfg.MaxLivePerIdentity <= 0 {
		cfg.MaxLivePerIdentity = 10000
	}
	if cfg.MaxBranches <= 0 {
		cfg.MaxBranches = 256
	}
	// Calls to participants name this coordinator's instance.
	cfg.DialOptions = append(append([]grpc.DialOption(nil), cfg.DialOptions...),
		grpc.WithChainUnaryInterceptor(remote.InstanceInterceptor(cfg.Coordinator.Instance)))
	return &Server{cfg: cfg, c: cfg.Coordinator, logger: cfg.Logger, txs: map[ids.TxID]*entry{}, live: map[string]int{}, reportKeys: map[string][][]byte{}}, nil
}

// Register serves the Coordinator service on r, every call checked by the
// Authorizer.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	s.cfg.Authorizer.Register(r, &txcoordv1.Coordinator_ServiceDesc, s)
}

// Close stops the transactions' timeout timers and closes the connections
// to remote participants. Call it after the coordinator is closed.
func (s *Server) Close() error {
	s.mu.Lock()
	rs := s.remotes
	s.remotes, s.closed = nil, true
	for _, e := range s.txs {
		if e.timer != nil {
			e.timer.Stop()
		}
	}
	s.mu.Unlock()
	var errs []error
	for _, r := range rs {
		errs = append(errs, r.Close())
	}
	return errors.Join(errs...)
}

// Run forgets finished transactions once Retain has passed, until ctx
// ends. Its work is proportional to what it forgets: it never walks the
// live transactions, whose timeouts are timers of their own.
func (s *Server) Run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			s.forgetLocked(now)
			s.mu.Unlock()
			s.settle(now)
		}
	}
}

// settle replaces the transactions finished more than SettleAfter ago,
// and no longer live at the coordinator, with what they ended as. It looks
// at each finished transaction once.
func (s *Server) settle(now time.Time) {
	var cands []*entry
	s.mu.Lock()
	i := s.nSettled
	for ; i < len(s.done) && now.Sub(s.done[i].at) > s.cfg.SettleAfter; i++ {
		if e := s.txs[s.done[i].id]; e != nil && e.tx != nil {
			cands = append(cands, e)
		}
	}
	s.nSettled = i
	s.mu.Unlock()
	for _, e := range cands {
		// Only settle writes e.tx once it is tracked: reading it here
		// without the lock races with nothing.
		tx := e.tx
		if _, live := s.c.Tx(e.id); live {
			continue // phase two runs still: it keeps its transaction
		}
		status, result := tx.Status(), tx.Result()
		if result == nil && (status.State == protocol.StateAborted || status.State == protocol.StateAborting) {
			// Rolled back as asked (by request or its timeout): its
			// Result is nil, which alone would read as committed.
			result = fmt.Errorf("%w: rolled back as asked", coordinator.ErrAborted)
		}
		st := &settledTx{state: status.State, started: status.Started.UnixNano(), retries: int32(status.Retries), result: settledResult(result)}
		s.mu.Lock()
		e.tx, e.settled = nil, st
		s.mu.Unlock()
	}
}

// track starts to keep e: its timeout, and its end.
func (s *Server) track(e *entry, timeout time.Duration) {
	s.mu.Lock()
	s.txs[e.id] = e
	s.live[e.owner]++
	e.timer = time.AfterFunc(timeout, func() { s.expire(e) })
	s.mu.Unlock()
	e.tx.AfterDone(func() { s.finish(e) })
}

// finish records that e's outcome is known.
func (s *Server) finish(e *entry) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !e.finished.IsZero() {
		return
	}
	e.finished = now
	e.timer.Stop()
	e.timer = nil
	if s.live[e.owner]--; s.live[e.owner] <= 0 {
		delete(s.live, e.owner)
	}
	s.done = append(s.done, finished{id: e.id, at: now})
	s.forgetLocked(now)
}

// forgetLocked forgets the finished transactions past Retain, and the
// oldest past MaxRetained. s.mu is held.
func (s *Server) forgetLocked(now time.Time) {
	n := 0
	for n < len(s.done) && (now.Sub(s.done[n].at) > s.cfg.Retain || len(s.done)-n > s.cfg.MaxRetained) {
		delete(s.txs, s.done[n].id)
		n++
	}
	if n > 0 {
		clear(s.done[:n])
		s.done = s.done[n:]
		s.nSettled = max(0, s.nSettled-n)
	}
}

// expire rolls e back at its deadline, unless it finished or a commit or
// rollback was asked.
func (s *Server) expire(e *entry) {
	s.mu.Lock()
	if !e.finished.IsZero() || e.rolled || e.commit {
		s.mu.Unlock()
		return
	}
	e.rolled = true
	tx := e.tx
	s.mu.Unlock()
	s.logger.Info("transaction timed out; rolling back", "txid", e.id)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = tx.Rollback(ctx)
}

// Live counts the transactions the server is tracking.
func (s *Server) Live() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.txs)
}

func (s *Server) resources() []participant.Resource {
	return s.c.Resources()
}

func (s *Server) lookup(id ids.TxID) (*entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.txs[id]
	return e, ok
}
