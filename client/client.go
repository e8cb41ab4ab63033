// Package client begins, commits and rolls back global transactions
// through a txcoord server, and carries them to the services a client
// calls.
//
//	conn, _ := grpc.NewClient(coordAddr, grpc.WithTransportCredentials(creds))
//	c := client.New(conn)
//	svc, _ := grpc.NewClient(paymentAddr, grpc.WithTransportCredentials(creds),
//		grpc.WithUnaryInterceptor(client.UnaryClientInterceptor()))
//	err := c.Run(ctx, func(ctx context.Context) error {
//		_, err := payment.Charge(ctx, req) // joins the transaction
//		return err
//	})
//	switch client.OutcomeOf(err) { case client.Committed: ...; case client.Aborted: ...; case client.Unknown: ... }
package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

var (
	// ErrAborted: the transaction rolled back everywhere (or will, by
	// recovery). The cause is wrapped.
	ErrAborted = errors.New("txcoord: transaction aborted")
	// ErrOutcomeUnknown: the transaction may have committed or not; ask
	// with Client.Outcome later.
	ErrOutcomeUnknown = errors.New("txcoord: transaction outcome unknown")
	// ErrCommitPending: committed (the decision is durable), but some
	// participant has not acknowledged yet; it will.
	ErrCommitPending = errors.New("txcoord: committed; phase two still in progress")
	// ErrHeuristicHazard: COMMIT was decided, but a participant held no
	// prepared branch and could not prove that it committed (rolled back or
	// lost behind the coordinator's back): the transaction may be only
	// partly applied. An operator must check it (txctl show).
	ErrHeuristicHazard = errors.New("txcoord: heuristic hazard: committed, but a branch cannot be proven committed")
)

// Outcome is what a transaction ended as, as far as the caller can know.
type Outcome int

const (
	Unknown Outcome = iota
	Committed
	Aborted
	Hazard
)

func (o Outcome) String() string {
	switch o {
	case Committed:
		return "committed"
	case Aborted:
		return "aborted"
	case Hazard:
		return "hazard"
	}
	return "unknown"
}

// OutcomeOf classifies an error from Run or Tx.Commit: nil and
// ErrCommitPending are Committed, ErrAborted is Aborted,
// ErrHeuristicHazard is Hazard, anything else is Unknown.
func OutcomeOf(err error) Outcome {
	switch {
	case err == nil, errors.Is(err, ErrCommitPending):
		return Committed
	case errors.Is(err, ErrAborted):
		return Aborted
	case errors.Is(err, ErrHeuristicHazard):
		return Hazard
	}
	return Unknown
}

// UnaryClientInterceptor sends the transaction in a call's context to the
// called service, and collects the branches the service reports in its
// reply for Commit to carry. Install it on the connections to participant
// services.
func UnaryClientInterceptor() grpc.UnaryClientInterceptor { return remote.UnaryClientInterceptor() }

// Client talks to a txcoord server.
type Client struct {
	coord           txcoordv1.CoordinatorClient
	timeout         time.Duration
	rollbackTimeout time.Duration
	noReports       bool
}

// Option configures a Client.
type Option func(*Client)

// WithTxTimeout sets how long a transaction may stay open before the
// coordinator rolls it back (default: the server's).
func WithTxTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithRollbackTimeout bounds the rollback Run sends when its function
// fails (default 10s); an unanswered rollback is finished by the
// coordinator's timeout.
func WithRollbackTimeout(d time.Duration) Option { return func(c *Client) { c.rollbackTimeout = d } }

// WithoutReports makes the services a transaction calls register their
// branches with the coordinator themselves, one round trip each, instead
// of reporting them in their replies for Commit to carry (the default
// where the server and the service's SDK can). For calls whose replies'
// trailers do not reach this client's interceptor.
func WithoutReports() Option { return func(c *Client) { c.noReports = true } }

// New returns a client of the coordinator at conn.
func New(conn grpc.ClientConnInterface, opts ...Option) *Client {
	c := &Client{coord: txcoordv1.NewCoordinatorClient(conn), rollbackTimeout: 10 * time.Second}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Tx is a global transaction begun through the coordinator.
type Tx struct {
	c  *Client
	tx remote.Tx
}

// ID is the transaction id.
func (t *Tx) ID() ids.TxID { return t.tx.ID }

// Context returns ctx carrying the transaction: calls made with it through
// a connection with UnaryClientInterceptor join it.
func (t *Tx) Context(ctx context.Context) context.Context { return remote.NewContext(ctx, t.tx) }

// TxOption changes how one transaction is begun.
type TxOption func(*txcoordv1.BeginRequest)

// WithDecisionHolder makes the resource named name (a PostgreSQL database
// registered with the server) keep the transaction's commit decision,
// instead of the server's --holder.
func WithDecisionHolder(name string) TxOption {
	return func(r *txcoordv1.BeginRequest) { r.DecisionHolder, r.LogDecision = name, false }
}

// WithLoggedDecision keeps the transaction's decision in the coordinator's
// log even when the server has a decision holder.
func WithLoggedDecision() TxOption {
	return func(r *txcoordv1.BeginRequest) { r.DecisionHolder, r.LogDecision = "", true }
}

// DecisionHolder is the transaction's decision holder, if it has one.
func (t *Tx) DecisionHolder() (string, bool) { return t.tx.Holder, t.tx.Holder != "" }

// Begin starts a global transaction.
func (c *Client) Begin(ctx context.Context, opts ...TxOption) (*Tx, error) {
	req := &txcoordv1.BeginRequest{}
	if c.timeout > 0 {
		req.Timeout = durationpb.New(c.timeout)
	}
	for _, o := range opts {
		o(req)
	}
	resp, err := c.coord.Begin(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("txcoord: begin: %w", err)
	}
	tx, err := remote.ParseGTRID(resp.GetGtrid())
	if err != nil || tx.ID.String() != resp.GetTxid() {
		return nil, fmt.Errorf("txcoord: begin: the coordinator answered a malformed transaction (%q, %q): %v", resp.GetTxid(), resp.GetGtrid(), err)
	}
	if h := resp.GetDecisionHolder(); h != "" {
		if err := ids.ValidateHolderName(h); err != nil {
			return nil, fmt.Errorf("txcoord: begin: the coordinator answered a malformed decision holder: %w", err)
		}
		tx.Holder = h
	}
	if inst := resp.GetInstance(); inst.GetLogId() != "" && !c.noReports {
		tx.Report = remote.FormatInstance(inst.GetOwner(), inst.GetLogId(), inst.GetEpoch())
		tx.Reports = &remote.Reports{}
	}
	return &Tx{c: c, tx: tx}, nil
}

// reported is what the transaction's services reported in their replies;
// calls answered later fail (remote.ErrReportedLate).
func (t *Tx) reported() []*txcoordv1.ReportedBranch {
	if t.tx.Reports == nil {
		return nil
	}
	return t.tx.Reports.Seal()
}

// Commit commits the transaction, with the branches its services reported
// in their replies; the error tells the outcome (OutcomeOf). A call still
// running when Commit is sent has no branch in the transaction: it fails,
// and what it prepared is rolled back.
func (t *Tx) Commit(ctx context.Context) error {
	resp, err := t.c.coord.Commit(ctx, &txcoordv1.CommitRequest{Txid: t.tx.ID.String(), Gtrid: t.tx.GTRID(), Branches: t.reported()})
	if err != nil {
		switch status.Code(err) {
		case codes.NotFound, codes.FailedPrecondition:
			// Rolled back, timed out, or forgotten without a COMMIT.
			return fmt.Errorf("%w (%s): %v", ErrAborted, t.tx.ID, status.Convert(err).Message())
		case codes.Unavailable:
			if status.Convert(err).Message() == "the coordinator is shutting down" {
				return fmt.Errorf("%w (%s): %v", ErrAborted, t.tx.ID, err)
			}
		}
		return fmt.Errorf("%w (%s): %v", ErrOutcomeUnknown, t.tx.ID, err)
	}
	switch resp.GetOutcome() {
	case txcoordv1.Outcome_OUTCOME_COMMITTED:
		if resp.GetHeuristicHazard() {
			return fmt.Errorf("%w (%s): %s", ErrHeuristicHazard, t.tx.ID, resp.GetReason())
		}
		if resp.GetPhaseTwoPending() {
			return fmt.Errorf("%w (%s): %s", ErrCommitPending, t.tx.ID, resp.GetReason())
		}
		return nil
	case txcoordv1.Outcome_OUTCOME_ABORTED:
		return fmt.Errorf("%w (%s): %s", ErrAborted, t.tx.ID, resp.GetReason())
	case txcoordv1.Outcome_OUTCOME_UNKNOWN:
		return fmt.Errorf("%w (%s): %s", ErrOutcomeUnknown, t.tx.ID, resp.GetReason())
	}
	return fmt.Errorf("%w (%s): the coordinator answered outcome %v", ErrOutcomeUnknown, t.tx.ID, resp.GetOutcome())
}

// Rollback rolls the transaction back. Participants that cannot be reached
// now are rolled back by recovery.
func (t *Tx) Rollback(ctx context.Context, reason string) error {
	resp, err := t.c.coord.Rollback(ctx, &txcoordv1.RollbackRequest{Txid: t.tx.ID.String(), Reason: reason, Gtrid: t.tx.GTRID(), Branches: t.reported()})
	if err != nil {
		return fmt.Errorf("txcoord: rollback %s: %w", t.tx.ID, err)
	}
	if resp.GetOutcome() != txcoordv1.Outcome_OUTCOME_ABORTED {
		return fmt.Errorf("txcoord: rollback %s: outcome %v", t.tx.ID, resp.GetOutcome())
	}
	return nil
}

// Run begins a transaction, calls fn with a context that carries it, and
// commits if fn returns nil or rolls back otherwise (returning fn's error
// wrapped in ErrAborted). The result follows OutcomeOf.
func (c *Client) Run(ctx context.Context, fn func(ctx context.Context) error, opts ...TxOption) error {
	tx, err := c.Begin(ctx, opts...)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrAborted, err)
	}
	if err := fn(tx.Context(ctx)); err != nil {
		// Even if the rollback call fails, nothing commits: no COMMIT is
		// logged, and the coordinator's timeout and recovery finish it.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.rollbackTimeout)
		_ = tx.Rollback(rctx, err.Error())
		cancel()
		return fmt.Errorf("%w (%s): %w", ErrAborted, tx.ID(), err)
	}
	return tx.Commit(ctx)
}

// TxID returns the id of the transaction ctx carries (inside Run's
// function, or a context from Tx.Context): keep it to ask Outcome later
// if the commit's outcome is unknown.
func TxID(ctx context.Context) (ids.TxID, bool) {
	tx, ok := remote.FromContext(ctx)
	return tx.ID, ok
}

// Outcome asks the coordinator what transaction id became: Committed,
// Aborted, or Unknown while it is still being decided.
func (c *Client) Outcome(ctx context.Context, id ids.TxID) (Outcome, error) {
	return c.outcome(ctx, &txcoordv1.GetOutcomeRequest{Txid: id.String()})
}

// Outcome asks what became of the transaction, naming its coordinator: a
// coordinator that did not begin it answers an error, never an outcome.
func (t *Tx) Outcome(ctx context.Context) (Outcome, error) {
	return t.c.outcome(ctx, &txcoordv1.GetOutcomeRequest{Txid: t.tx.ID.String(), Gtrid: t.tx.GTRID()})
}

func (c *Client) outcome(ctx context.Context, req *txcoordv1.GetOutcomeRequest) (Outcome, error) {
	resp, err := c.coord.GetOutcome(ctx, req)
	if err != nil {
		return Unknown, err
	}
	switch resp.GetState() {
	case txcoordv1.TxState_TX_STATE_COMMITTED:
		return Committed, nil
	case txcoordv1.TxState_TX_STATE_ABORTED:
		return Aborted, nil
	case txcoordv1.TxState_TX_STATE_HAZARD:
		return Hazard, nil
	}
	return Unknown, nil
}
