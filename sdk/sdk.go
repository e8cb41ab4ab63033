// Package sdk makes a Go service that owns a PostgreSQL database a
// participant in txcoord's global transactions.
//
// A handler called inside a global transaction (the caller used the client
// package, whose interceptor sends the transaction in gRPC metadata) runs
// its SQL through Participant.Branch. When the function returns nil, the
// SDK prepares the branch (PREPARE TRANSACTION) and reports it in the reply
// for the client's Commit to carry (when the caller is the client
// package's interceptor) or registers it with the coordinator; the
// coordinator later commits or rolls it back through the
// Participant service that the SDK serves on the service's own gRPC server.
// A branch left prepared too long (the coordinator could not reach the
// service, or the service restarted) is settled by asking the coordinator
// for the transaction's outcome.
//
//	az, err := authz.ForCoordinator("spiffe://example.org/txcoord/orders-1") // only it may finish branches
//	p, err := sdk.New(sdk.Config{Name: "payment", Address: "10.0.0.7:7002", Coordinator: coordConn, Resource: db, Authorizer: az})
//	srv := grpc.NewServer(grpc.Creds(mutualTLS), grpc.UnaryInterceptor(sdk.UnaryServerInterceptor()))
//	p.Register(srv)
//	go p.Run(ctx)
//	...
//	func (s *server) Charge(ctx context.Context, req *pb.ChargeRequest) (*pb.ChargeReply, error) {
//		err := s.p.Branch(ctx, func(ctx context.Context, b *postgres.Branch) error {
//			_, err := b.ExecContext(ctx, "UPDATE accounts SET balance = balance - $1 WHERE id = $2", req.Amount, req.Account)
//			return err
//		})
//		...
//	}
package sdk

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/mysql"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

var (
	// ErrNoTransaction reports a Branch call outside a global transaction:
	// the call carried no transaction metadata.
	ErrNoTransaction = errors.New("sdk: the call is not part of a global transaction")
	// ErrRefused reports a branch the coordinator would not take (the
	// transaction is unknown, already deciding, or timed out); the branch
	// was rolled back.
	ErrRefused = errors.New("sdk: the coordinator refused the branch; it was rolled back")
	// ErrRegistrationUnknown reports a prepared branch whose registration
	// got no answer: it stays prepared until the coordinator's outcome is
	// known, then commits only if the transaction committed with it.
	ErrRegistrationUnknown = errors.New("sdk: branch prepared, registration unconfirmed")
	// ErrVotedNo reports a branch that could not prepare; it was rolled
	// back.
	ErrVotedNo = errors.New("sdk: branch could not prepare")
)

// Config configures a participant.
type Config struct {
	// Name is the participant's name, unique among the coordinator's
	// participants: [A-Za-z0-9_-], at most 40 bytes. Required.
	Name string
	// Address is where the coordinator reaches this service's gRPC server
	// (host:port). Required.
	Address string
	// Coordinator is a connection to the coordinator. Required.
	Coordinator grpc.ClientConnInterface
	// Resource is the service's database: a *postgres.Resource or a
	// *mysql.Resource (MariaDB or MySQL through XA). Required.
	Resource Resource
	// InDoubtTimeout: a branch of this participant prepared longer than
	// this asks the coordinator for its outcome (default 30s). Branches
	// found prepared when Run starts ask at once.
	InDoubtTimeout time.Duration
	// CheckInterval is how often Run looks for branches in doubt (default
	// 5s).
	CheckInterval time.Duration
	// CallTimeout bounds each call to the coordinator and each COMMIT or
	// ROLLBACK PREPARED (default 10s).
	CallTimeout time.Duration
	// MarkerRetention is how long the database keeps the marker that
	// proves a branch committed (postgres markers), so that a commit the
	// coordinator retries after a lost reply is answered "committed" and
	// not "unknown gid" (default 24h). Run deletes older markers, once an
	// hour and never in its first hour (a coordinator retrying after this
	// service was down gets there first). A commit retried later than this
	// is reported by the coordinator as a heuristic hazard, never as
	// committed. Negative keeps markers forever.
	MarkerRetention time.Duration
	// Authorizer checks the callers of the Participant service that
	// Register serves: the coordinator only (authz.ForCoordinator with its
	// SPIFFE ID). Required unless InsecureAnyCaller.
	Authorizer *authz.Authorizer
	// InsecureAnyCaller serves the Participant service to every caller:
	// anyone who reaches the service's port may then list its prepared
	// branches, and commit or roll them back. For tests and loopback-only
	// development.
	InsecureAnyCaller bool
	// Logger receives structured logs (default: discard).
	Logger *slog.Logger
}

// Resource is a service's database: a *postgres.Resource or a
// *mysql.Resource.
type Resource interface {
	participant.Resource
	DB() *sql.DB
	// PurgeMarkers deletes the markers that prove commits older than age.
	PurgeMarkers(ctx context.Context, age time.Duration) (int64, error)
}

// noResource reports a Resource that is nil, or a nil pointer of a known
// kind.
func noResource(r Resource) bool {
	switch r := r.(type) {
	case nil:
		return true
	case *postgres.Resource:
		return r == nil
	case *mysql.Resource:
		return r == nil
	}
	return false
}

// markerPurgeEvery is how often Run deletes markers older than
// MarkerRetention.
const markerPurgeEvery = time.Hour

// Participant is a service's participation in global transactions.
type Participant struct {
	cfg    Config
	coord  txcoordv1.CoordinatorClient
	res    Resource
	logger *slog.Logger

	inst served   // the coordinator instance served (instance.go)
	rep  reporter // the report key, and the instance that has it (report.go)

	mu      sync.Mutex
	working map[ids.GID]bool // branches between BEGIN and the end of registration
	started time.Time
	stats   Stats
}

// Stats counts what a participant did.
type Stats struct {
	Prepared, Registered, RolledBack, ReadOnly uint64
	// Reported counts prepared branches handed back in the reply for the
	// client's Commit to carry, instead of registered.
	Reported           uint64
	Committed, Aborted uint64 // finished on the coordinator's request
	Resolved           uint64 // in-doubt branches settled by asking the outcome
}

// New checks cfg and returns a participant. Call Register to serve the
// Participant service and Run to announce it and settle branches in doubt.
func New(cfg Config) (*Participant, error) {
	if err := ids.ValidateName("participant name", cfg.Name); err != nil {
		return nil, fmt.Errorf("sdk: %w", err)
	}
	if len(cfg.Name) > 40 {
		return nil, fmt.Errorf("sdk: participant name %q is longer than 40 bytes", cfg.Name)
	}
	if strings.Contains(cfg.Name, "-h-") {
		return nil, fmt.Errorf("sdk: participant name %q contains \"-h-\", which marks a decision holder in a gid", cfg.Name)
	}
	if err := remote.ValidateAddress(cfg.Address); err != nil {
		return nil, fmt.Errorf("sdk: %w", err)
	}
	if cfg.Coordinator == nil {
		return nil, errors.New("sdk: no coordinator connection")
	}
	if noResource(cfg.Resource) {
		return nil, errors.New("sdk: no database resource")
	}
	switch {
	case cfg.Authorizer == nil && !cfg.InsecureAnyCaller:
		return nil, errors.New("sdk: no Authorizer: the Participant service would take Commit, Rollback and ListPrepared from any caller; " +
			"give Authorizer (authz.ForCoordinator(\"spiffe://...\") with mutual TLS) or, for tests and loopback-only development, InsecureAnyCaller")
	case cfg.Authorizer == nil:
		cfg.Authorizer = authz.Insecure()
	}
	if cfg.InDoubtTimeout <= 0 {
		cfg.InDoubtTimeout = 30 * time.Second
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = 5 * time.Second
	}
	if cfg.MarkerRetention == 0 {
		cfg.MarkerRetention = 24 * time.Hour
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("sdk: report key: %w", err)
	}
	return &Participant{
		cfg: cfg, coord: txcoordv1.NewCoordinatorClient(cfg.Coordinator), res: cfg.Resource, logger: cfg.Logger,
		rep: reporter{key: key}, working: map[ids.GID]bool{}, started: time.Now(),
	}, nil
}

// Stats returns counters since New.
func (p *Participant) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

func (p *Participant) count(f func(*Stats)) {
	p.mu.Lock()
	f(&p.stats)
	p.mu.Unlock()
}

// UnaryServerInterceptor puts the global transaction a call carries into
// its context, for Branch and remote.FromContext. A call with a malformed
// transaction is refused with INVALID_ARGUMENT.
func UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		tx, ok, err := remote.FromIncoming(ctx)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		if !ok {
			return handler(ctx, req)
		}
		ctx = remote.NewContext(ctx, tx)
		if tx.Report == "" || tx.ReportMethod != info.FullMethod {
			// Not asked, or asked of another method (metadata forwarded
			// by a service in between, which would drop the report).
			return handler(ctx, req)
		}
		ctx, end := withReply(ctx, tx)
		defer end()
		return handler(ctx, req)
	}
}

// Branch runs fn as this service's branch of the global transaction in
// ctx. If fn returns nil, the branch is prepared and registered with the
// coordinator, or reported in the reply to a caller that collects reports
// (the client package), and Branch returns nil: the work commits if and
// only if the transaction commits with it, which a reported branch does
// unless its reply never reaches the caller (the call failed there). If fn fails, the work is rolled back and fn's error is
// returned. Other failures wrap ErrNoTransaction, ErrVotedNo, ErrRefused
// or ErrRegistrationUnknown.
func (p *Participant) Branch(ctx context.Context, fn func(ctx context.Context, b *postgres.Branch) error) error {
	return Work(ctx, p, fn)
}

// Work is Branch for a participant of any database: B is the branch type
// of the participant's Resource (*postgres.Branch, *mysql.Branch).
//
//	err := sdk.Work(ctx, p, func(ctx context.Context, b *mysql.Branch) error {
//		_, err := b.ExecContext(ctx, `UPDATE stock SET qty = qty - ? WHERE item = ?`, 1, item)
//		return err
//	})
func Work[B participant.Branch](ctx context.Context, p *Participant, fn func(ctx context.Context, b B) error) error {
	tx, ok := remote.FromContext(ctx)
	if !ok {
		var err error
		tx, ok, err = remote.FromIncoming(ctx)
		if err != nil {
			return err
		}
		if !ok {
			return ErrNoTransaction
		}
	}
	suffix := make([]byte, 6)
	if _, err := rand.Read(suffix); err != nil {
		return err
	}
	branch := p.cfg.Name + "-" + hex.EncodeToString(suffix)
	if tx.Holder != "" {
		// The gid names the decision holder, so that recovery finds the
		// decision there; a name too long for that leaves the transaction
		// on the coordinator's log.
		if marked, err := ids.MarkHolder(branch, tx.Holder); err == nil {
			branch = marked
		} else {
			p.logger.Warn("branch gid cannot name the decision holder; the transaction will log its decision", "holder", tx.Holder, "err", err)
		}
	}
	gid, err := tx.GID(branch)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.working[gid] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.working, gid)
		p.mu.Unlock()
	}()

	br, err := p.res.Begin(ctx, gid)
	if err != nil {
		return err
	}
	b, ok := br.(B)
	if !ok {
		_ = br.Abort(context.WithoutCancel(ctx))
		return fmt.Errorf("sdk: %s: the resource's branches are %T, not %T", p.cfg.Name, br, b)
	}
	if err := fn(ctx, b); err != nil {
		_ = b.Abort(context.WithoutCancel(ctx))
		return err
	}
	vote, err := b.Prepare(ctx)
	switch vote {
	case participant.VoteReadOnly:
		p.count(func(s *Stats) { s.ReadOnly++ })
		return nil
	case participant.VoteYes:
	default:
		return fmt.Errorf("%w: %s: %v", ErrVotedNo, gid, err)
	}
	p.count(func(s *Stats) { s.Prepared++ })
	failpoint.Hit(failpoint.SDKAfterPrepare)
	if p.report(ctx, tx, gid) {
		p.count(func(s *Stats) { s.Reported++ })
		failpoint.Hit(failpoint.SDKAfterReport)
		return nil
	}

	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.CallTimeout)
	defer cancel()
	resp, err := p.coord.RegisterBranch(rctx, &txcoordv1.RegisterBranchRequest{
		Txid: tx.ID.String(), Gid: gid.String(), Participant: p.cfg.Name, Address: p.cfg.Address,
		ExpectedInstance: p.expected(rctx), ReportKey: p.rep.key,
	})
	if err != nil {
		switch status.Code(err) {
		case codes.NotFound, codes.FailedPrecondition, codes.InvalidArgument, codes.AlreadyExists, codes.PermissionDenied, codes.Unauthenticated:
			// Refused for certain: nobody will commit it.
			if rerr := p.rollback(rctx, gid); rerr != nil {
				p.logger.Warn("rolling back a refused branch failed; it will be settled by asking the outcome", "gid", gid, "err", rerr)
			}
			return fmt.Errorf("%w: %s: %v", ErrRefused, gid, err)
		}
		p.logger.Warn("branch prepared, registration unconfirmed; it will be settled by asking the outcome", "gid", gid, "err", err)
		return fmt.Errorf("%w: %s: %v", ErrRegistrationUnknown, gid, err)
	}
	if err := p.learnAnswer(rctx, resp.GetInstance()); err != nil {
		// Registered with a coordinator instance this participant does
		// not serve (met for the first time by two processes at once):
		// its calls will be refused; the branch waits for an operator.
		return fmt.Errorf("%w: %s: %v", ErrRegistrationUnknown, gid, err)
	}
	p.rep.keyed(resp.GetInstance())
	p.count(func(s *Stats) { s.Registered++ })
	failpoint.Hit(failpoint.SDKAfterRegister)
	return nil
}

func (p *Participant) rollback(ctx context.Context, gid ids.GID) error {
	err := p.res.Rollback(ctx, gid)
	if err == nil || errors.Is(err, participant.ErrUnknownBranch) {
		p.count(func(s *Stats) { s.RolledBack++ })
		return nil
	}
	return err
}

// ours reports whether g is a branch this participant made.
func (p *Participant) ours(g ids.GID) bool {
	return !g.IsZero() && strings.HasPrefix(g.Branch, p.cfg.Name+"-")
}

// Run announces the participant to the coordinator and, until ctx ends,
// settles branches in doubt: its own prepared branches older than the
// in-doubt timeout (at once for those prepared before Run started) ask the
// coordinator for the outcome and commit or roll back accordingly.
func (p *Participant) Run(ctx context.Context) error {
	announced := false
	first := true
	t := time.NewTicker(p.cfg.CheckInterval)
	defer t.Stop()
	nextPurge := time.Now().Add(markerPurgeEvery)
	for {
		if !announced {
			actx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
			resp, err := p.coord.Announce(actx, &txcoordv1.AnnounceRequest{Participant: p.cfg.Name, Address: p.cfg.Address, ExpectedInstance: p.expected(actx), ReportKey: p.rep.key})
			if err == nil {
				err = p.learnAnswer(actx, resp.GetInstance())
			}
			if err == nil {
				p.rep.keyed(resp.GetInstance())
			}
			cancel()
			if err == nil {
				announced = true
			} else if ctx.Err() == nil {
				p.logger.Warn("announcing to the coordinator failed; will retry", "err", err)
			}
		}
		if _, err := p.settle(ctx, first); err != nil && ctx.Err() == nil {
			p.logger.Warn("settling branches in doubt", "err", err)
		} else if err == nil {
			first = false
		}
		if p.cfg.MarkerRetention > 0 && time.Now().After(nextPurge) {
			nextPurge = time.Now().Add(markerPurgeEvery)
			pctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
			if n, err := p.res.PurgeMarkers(pctx, p.cfg.MarkerRetention); err != nil && ctx.Err() == nil {
				p.logger.Warn("deleting old markers", "err", err)
			} else if n > 0 {
				p.logger.Debug("old markers deleted", "markers", n)
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Settle runs one pass over this participant's prepared branches now, as
// Run does periodically, asking about every one of them whatever its age
// (except those being registered right now), and returns how many it
// committed or rolled back.
func (p *Participant) Settle(ctx context.Context) (int, error) {
	return p.settle(ctx, true)
}

func (p *Participant) settle(ctx context.Context, all bool) (int, error) {
	sctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	list, err := p.res.Prepared(sctx)
	cancel()
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, pr := range list {
		g := pr.GID
		if !p.ours(g) {
			continue
		}
		p.mu.Lock()
		working := p.working[g]
		p.mu.Unlock()
		if working {
			continue
		}
		old := !pr.Since.IsZero() && time.Since(pr.Since) > p.cfg.InDoubtTimeout
		if !all && !old && pr.Since.After(p.started) {
			continue
		}
		done, err := p.settleOne(ctx, g)
		if err != nil {
			errs = append(errs, err)
		}
		if done {
			n++
		}
	}
	return n, errors.Join(errs...)
}

func (p *Participant) settleOne(ctx context.Context, g ids.GID) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	resp, err := p.coord.GetOutcome(cctx, &txcoordv1.GetOutcomeRequest{
		Txid: g.TxID.String(), Gid: g.String(), Participant: p.cfg.Name, Address: p.cfg.Address,
		ExpectedInstance: p.expected(cctx),
	})
	if err != nil {
		return false, fmt.Errorf("sdk: outcome of %s: %w", g, err)
	}
	if err := p.learnAnswer(cctx, resp.GetInstance()); err != nil {
		return false, fmt.Errorf("sdk: outcome of %s: not acted on: %w", g, err)
	}
	switch resp.GetState() {
	case txcoordv1.TxState_TX_STATE_COMMITTED:
		if err := p.res.Commit(cctx, g); err != nil {
			// Unknown gid here means it went from prepared to gone
			// without a proven commit: not ours to call committed.
			return false, err
		}
		p.logger.Info("branch in doubt committed: its transaction committed", "gid", g)
		p.count(func(s *Stats) { s.Resolved++; s.Committed++ })
		return true, nil
	case txcoordv1.TxState_TX_STATE_ABORTED:
		if err := p.rollback(cctx, g); err != nil {
			return false, err
		}
		p.logger.Info("branch in doubt rolled back: its transaction aborted", "gid", g)
		p.count(func(s *Stats) { s.Resolved++; s.Aborted++ })
		return true, nil
	}
	return false, nil
}
