package server

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/coordinator/protocol"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"github.com/txcoord/txcoord/wal"
)

// GetTransaction, ListTransactions, Resolve and Recover are the operator's
// and observer's calls: transactions shown, listed, resolved by hand, and
// recovery run on demand.

func (s *Server) GetTransaction(ctx context.Context, req *txcoordv1.GetTransactionRequest) (*txcoordv1.Transaction, error) {
	id, err := parseTxID(req.GetTxid())
	if err != nil {
		return nil, err
	}
	if !s.caller(ctx).Has(authz.Observer) {
		// A client reads a transaction it began, while it is tracked.
		e, live := s.lookup(id)
		if !live {
			return nil, s.cfg.Authorizer.Deny(ctx, "not-owner", codes.PermissionDenied,
				"%s may read only transactions it began (and only while the server tracks them); %s is not one: reading others needs role observer", s.caller(ctx), id)
		}
		if err := s.mayAct(ctx, e, id, authz.Observer); err != nil {
			return nil, err
		}
		if req.GetProbe() {
			return nil, s.cfg.Authorizer.Deny(ctx, "role", codes.PermissionDenied, "probe asks every database: it needs role observer")
		}
	}
	tx, ok := s.describe(id)
	var found []coordinator.PreparedBranch
	var errs []error
	if req.GetProbe() {
		found, errs = s.c.PreparedBranches(ctx, id)
		if !ok && len(found) > 0 {
			tx, ok = inDoubt(id, found), true
		}
		if ok {
			probe(tx, found, errs)
		}
	}
	if !ok {
		// Not live, not logged, nothing prepared found: a decision
		// holder's row may still keep its decision.
		held, err := s.heldOnly(ctx, id)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "transaction %s is not live here and no decision is logged, but the decision holders could not be asked whether one keeps its decision: %v", id, err)
		}
		if held != nil {
			tx, ok = held, true
			if req.GetProbe() {
				probe(tx, found, errs)
			}
		}
	}
	if !ok && s.c.Forgotten(id) {
		return nil, status.Errorf(codes.NotFound, "unknown transaction %s: it began before the log's retention of finished decisions, so whether it committed is no longer known here", id)
	}
	if !ok {
		return nil, status.Errorf(codes.NotFound, "unknown transaction %s: not live here, no decision logged or held, and no prepared branch found (if it was begun here, it aborted: presumed abort)", id)
	}
	if tx.DecisionHolder != "" && tx.HeldDecision == "" {
		tx.HeldDecision = s.heldDecision(ctx, id, tx.DecisionHolder)
	}
	if err := s.c.Log().Records(func(r wal.Record) error {
		if r.TxID == id {
			tx.Records = append(tx.Records, logRecord(r))
		}
		return nil
	}); err != nil {
		return nil, status.Errorf(codes.DataLoss, "reading the log: %v", err)
	}
	return tx, nil
}

func logRecord(r wal.Record) *txcoordv1.LogRecord {
	out := &txcoordv1.LogRecord{Lsn: r.LSN, Kind: r.Kind.String(), Time: timestamppb.New(r.Time), Epoch: r.Epoch, Heuristic: r.Heuristic, Who: r.Who, Why: r.Why, Holder: r.Holder}
	for _, b := range r.Branches {
		out.Gids = append(out.Gids, b.GID.String())
	}
	return out
}

// inDoubt describes a transaction known only by its prepared branches.
// Its decision holder, if any, is the one their gids name.
func inDoubt(id ids.TxID, found []coordinator.PreparedBranch) *txcoordv1.Transaction {
	out := &txcoordv1.Transaction{Txid: id.String(), State: txcoordv1.TxState_TX_STATE_IN_DOUBT}
	if t := id.Time(); !t.IsZero() {
		out.Started = timestamppb.New(t)
		out.Age = durationpb.New(time.Since(t))
	}
	for _, f := range found {
		out.Branches = append(out.Branches, &txcoordv1.Branch{Participant: f.Resource, Gid: f.GID.String(), State: "prepared"})
		if h, ok := f.GID.Holder(); ok && out.DecisionHolder == "" {
			out.DecisionHolder = h
		}
	}
	return out
}

// heldTimeout bounds asking decision holders for their rows in one request.
const heldTimeout = 10 * time.Second

// heldDecision says what decision holder holder keeps for transaction id,
// in the words of Transaction.held_decision. It reads the row without
// fencing: it changes nothing.
func (s *Server) heldDecision(ctx context.Context, id ids.TxID, holder string) string {
	cctx, cancel := context.WithTimeout(ctx, heldTimeout)
	defer cancel()
	_, d, err := s.c.HeldDecision(cctx, id, holder)
	switch {
	case err == nil:
		return d.Outcome.String()
	case errors.Is(err, participant.ErrNoDecision):
		return "none"
	}
	return "cannot ask: " + err.Error()
}

// heldOnly describes transaction id, neither live nor logged, from the row
// a registered decision holder keeps for it (a commit whose row is not yet
// forgotten, or an abort a fence recorded). It returns nil when no holder
// keeps one, and an error when some holder could not be asked and none of
// the others keeps one.
func (s *Server) heldOnly(ctx context.Context, id ids.TxID) (*txcoordv1.Transaction, error) {
	cctx, cancel := context.WithTimeout(ctx, heldTimeout)
	defer cancel()
	name, d, err := s.c.HeldDecision(cctx, id, "")
	switch {
	case errors.Is(err, participant.ErrNoDecision):
		return nil, nil
	case err != nil:
		return nil, err
	}
	out := &txcoordv1.Transaction{Txid: id.String(), State: txcoordv1.TxState_TX_STATE_COMMITTING, DecisionHolder: name, HeldDecision: d.Outcome.String()}
	if d.Outcome != participant.OutcomeCommit {
		out.State = txcoordv1.TxState_TX_STATE_ABORTED
	}
	if t := id.Time(); !t.IsZero() {
		out.Started = timestamppb.New(t)
		out.Age = durationpb.New(time.Since(t))
	}
	for _, b := range d.Branches {
		out.Branches = append(out.Branches, &txcoordv1.Branch{Participant: b.Resource, Gid: b.GID.String(), State: "held"})
	}
	s.markHazard(out, id)
	return out, nil
}

// probe fills in what the resources say of each branch of tx, and adds
// prepared branches of it that tx does not name.
func probe(tx *txcoordv1.Transaction, found []coordinator.PreparedBranch, errs []error) {
	at := map[string]coordinator.PreparedBranch{}
	for _, f := range found {
		at[f.GID.String()] = f
	}
	named := map[string]bool{}
	for _, b := range tx.Branches {
		named[b.Gid] = true
	}
	for _, f := range found {
		if !named[f.GID.String()] {
			tx.Branches = append(tx.Branches, &txcoordv1.Branch{Participant: f.Resource, Gid: f.GID.String(), State: "unnamed"})
		}
	}
	for _, b := range tx.Branches {
		if f, ok := at[b.Gid]; ok {
			b.AtResource = "prepared"
			if !f.Since.IsZero() {
				b.PreparedAt = timestamppb.New(f.Since)
			}
			continue
		}
		b.AtResource = "not prepared"
		for _, e := range errs {
			if strings.HasPrefix(e.Error(), b.Participant+":") {
				b.AtResource = "could not ask: " + e.Error()
			}
		}
	}
}

// describe reports what is known of transaction id without asking the
// resources.
func (s *Server) describe(id ids.TxID) (*txcoordv1.Transaction, bool) {
	var out *txcoordv1.Transaction
	if t, ok := s.c.Tx(id); ok {
		out = fromStatus(t.Status())
	} else if e, ok := s.lookup(id); ok {
		st, result := s.finalOf(e)
		out = fromStatus(st)
		out.Live = false
		if coordinator.OutcomeOf(result) == coordinator.Aborted {
			out.State = txcoordv1.TxState_TX_STATE_ABORTED
		}
	}
	d, err := s.c.Log().Lookup(id)
	if err == nil {
		if out == nil {
			out = &txcoordv1.Transaction{Txid: id.String()}
			switch {
			case d.Heuristic && !d.Ended:
				out.State = txcoordv1.TxState_TX_STATE_HEURISTIC
			case d.Kind == wal.KindCommit && d.Ended:
				out.State = txcoordv1.TxState_TX_STATE_COMMITTED
			case d.Kind == wal.KindCommit:
				out.State = txcoordv1.TxState_TX_STATE_COMMITTING
			case d.Ended:
				out.State = txcoordv1.TxState_TX_STATE_ABORTED
			default:
				out.State = txcoordv1.TxState_TX_STATE_ABORTING
			}
			if t := id.Time(); !t.IsZero() {
				out.Started = timestamppb.New(t)
				out.Age = durationpb.New(time.Since(t))
			}
			out.Branches = loggedBranches(d)
		}
		dec := txcoordv1.Decision_DECISION_COMMIT
		if d.Kind == wal.KindAbort {
			dec = txcoordv1.Decision_DECISION_ABORT
		}
		out.Decision = &txcoordv1.LoggedDecision{Decision: dec, Time: timestamppb.New(d.Time), Ended: d.Ended, Heuristic: d.Heuristic, Who: d.Who, Why: d.Why, Holder: d.Holder}
		if d.Holder != "" && out.DecisionHolder == "" {
			out.DecisionHolder = d.Holder
		}
		if len(out.Branches) == 0 {
			// A settled transaction keeps no branches: the log's are
			// its branches.
			out.Branches = loggedBranches(d)
		}
	}
	if out != nil {
		s.markHazard(out, id)
	}
	return out, out != nil
}

// loggedBranches are the branches d names.
func loggedBranches(d wal.Decision) []*txcoordv1.Branch {
	var out []*txcoordv1.Branch
	for _, b := range d.Branches {
		out = append(out, &txcoordv1.Branch{Participant: b.Resource, Gid: b.GID.String(), State: "logged"})
	}
	return out
}

// markHazard shows tx as a heuristic hazard if the coordinator found it to
// be one.
func (s *Server) markHazard(tx *txcoordv1.Transaction, id ids.TxID) {
	if err := s.c.Hazard(id); err != nil {
		tx.State, tx.Hazard = txcoordv1.TxState_TX_STATE_HAZARD, err.Error()
	}
}

func fromStatus(st coordinator.TxStatus) *txcoordv1.Transaction {
	out := &txcoordv1.Transaction{
		Txid: st.TxID.String(), State: stateOf(st.State), Started: timestamppb.New(st.Started),
		Age: durationpb.New(time.Since(st.Started)), Retries: int32(st.Retries), Live: true,
		DecisionHolder: st.Holder,
	}
	if st.Cause != nil {
		out.Cause = st.Cause.Error()
	}
	for _, b := range st.Branches {
		pb := &txcoordv1.Branch{Participant: b.Resource, Gid: b.GID.String(), State: b.State.String(), Attempts: int32(b.Attempts)}
		if b.LastErr != nil {
			pb.LastError = b.LastErr.Error()
		}
		out.Branches = append(out.Branches, pb)
	}
	return out
}

func stateOf(s protocol.State) txcoordv1.TxState {
	switch s {
	case protocol.StateActive:
		return txcoordv1.TxState_TX_STATE_ACTIVE
	case protocol.StatePreparing, protocol.StateOnePhase, protocol.StateLogging:
		return txcoordv1.TxState_TX_STATE_PREPARING
	case protocol.StateCommitting:
		return txcoordv1.TxState_TX_STATE_COMMITTING
	case protocol.StateCommitted:
		return txcoordv1.TxState_TX_STATE_COMMITTED
	case protocol.StateAborting:
		return txcoordv1.TxState_TX_STATE_ABORTING
	case protocol.StateAborted:
		return txcoordv1.TxState_TX_STATE_ABORTED
	}
	return txcoordv1.TxState_TX_STATE_UNKNOWN
}

func (s *Server) ListTransactions(ctx context.Context, req *txcoordv1.ListTransactionsRequest) (*txcoordv1.ListTransactionsResponse, error) {
	var older time.Duration
	if d := req.GetOlderThan(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "older_than: %v", err)
		}
		older = d.AsDuration()
	}
	size, after, err := page(req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	want := map[txcoordv1.TxState]bool{}
	for _, st := range req.GetStates() {
		if st == txcoordv1.TxState_TX_STATE_UNSPECIFIED || txcoordv1.TxState_name[int32(st)] == "" {
			return nil, status.Errorf(codes.InvalidArgument, "unknown state %d", st)
		}
		want[st] = true
	}
	seen := map[string]bool{}
	var all []*txcoordv1.Transaction
	for _, st := range s.c.Transactions() {
		t := fromStatus(st)
		if d, err := s.c.Log().Lookup(st.TxID); err == nil {
			t.Decision = &txcoordv1.LoggedDecision{Decision: txcoordv1.Decision_DECISION_COMMIT, Time: timestamppb.New(d.Time), Ended: d.Ended, Holder: d.Holder}
		}
		seen[t.Txid] = true
		all = append(all, t)
	}
	pending, err := s.c.Log().Pending()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	for _, d := range pending {
		if seen[d.TxID.String()] {
			continue
		}
		if t, ok := s.describe(d.TxID); ok {
			seen[t.Txid] = true
			all = append(all, t)
		}
	}
	// Hazards whose decision a holder keeps are in no log record.
	for _, id := range s.c.HazardList() {
		if seen[id.String()] {
			continue
		}
		t, ok := s.describe(id)
		if !ok {
			if held, err := s.heldOnly(ctx, id); err == nil && held != nil {
				t, ok = held, true
			}
		}
		if ok {
			seen[t.Txid] = true
			all = append(all, t)
		}
	}
	if req.GetScan() {
		byTx := map[ids.TxID][]coordinator.PreparedBranch{}
		for _, r := range s.resources() {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			list, err := r.Prepared(cctx)
			cancel()
			if err != nil {
				return nil, status.Errorf(codes.Unavailable, "scanning %s: %v", r.Name(), err)
			}
			for _, p := range list {
				if !p.GID.Owned(s.c.Prefix(), s.c.ID()) || seen[p.GID.TxID.String()] {
					continue
				}
				byTx[p.GID.TxID] = append(byTx[p.GID.TxID], coordinator.PreparedBranch{Resource: r.Name(), GID: p.GID, Since: p.Since})
			}
		}
		// One read of its row per in-doubt transaction; a holder that
		// could not be asked once is not asked again in this call.
		unreachable := map[string]string{}
		for id, found := range byTx {
			t := inDoubt(id, found)
			if _, live := s.c.Tx(id); live {
				continue
			}
			probe(t, found, nil)
			if h := t.DecisionHolder; h != "" {
				if why, ok := unreachable[h]; ok {
					t.HeldDecision = why
				} else if t.HeldDecision = s.heldDecision(ctx, id, h); strings.HasPrefix(t.HeldDecision, "cannot ask") {
					unreachable[h] = t.HeldDecision
				}
			}
			all = append(all, t)
		}
	}
	var list []*txcoordv1.Transaction
	for _, t := range all {
		if len(want) > 0 && !want[t.State] {
			continue
		}
		if older > 0 && t.GetAge().AsDuration() < older {
			continue
		}
		list = append(list, t)
	}
	sort.Slice(list, func(i, j int) bool { return pageKey(list[i]) < pageKey(list[j]) })
	i := 0
	if after != "" {
		i = sort.Search(len(list), func(i int) bool { return pageKey(list[i]) > after })
	}
	resp := &txcoordv1.ListTransactionsResponse{}
	for ; i < len(list) && len(resp.Transactions) < size; i++ {
		resp.Transactions = append(resp.Transactions, list[i])
	}
	if i < len(list) && len(resp.Transactions) > 0 {
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(pageKey(resp.Transactions[len(resp.Transactions)-1])))
	}
	return resp, nil
}

// pageKey orders the list: by start time, then txid.
func pageKey(t *txcoordv1.Transaction) string {
	return fmt.Sprintf("%020d/%s", t.GetStarted().AsTime().UnixNano(), t.GetTxid())
}

const (
	defaultPage = 500
	maxPage     = 1000
)

// page reads a list request's paging.
func page(size int32, token string) (int, string, error) {
	n := int(size)
	switch {
	case n < 0:
		return 0, "", status.Errorf(codes.InvalidArgument, "page_size %d is negative", n)
	case n == 0:
		n = defaultPage
	case n > maxPage:
		n = maxPage
	}
	if token == "" {
		return n, "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) > 128 || !strings.Contains(string(b), "/") {
		return 0, "", status.Error(codes.InvalidArgument, "malformed page_token: pass next_page_token as it came")
	}
	return n, string(b), nil
}

func (s *Server) Resolve(ctx context.Context, req *txcoordv1.ResolveRequest) (*txcoordv1.ResolveResponse, error) {
	id, err := parseTxID(req.GetTxid())
	if err != nil {
		return nil, err
	}
	want := req.GetDecision()
	if want != txcoordv1.Decision_DECISION_COMMIT && want != txcoordv1.Decision_DECISION_ABORT {
		return nil, status.Error(codes.InvalidArgument, "decision must be COMMIT or ABORT")
	}
	if req.GetReason() == "" {
		return nil, status.Error(codes.InvalidArgument, "a reason is required: it is recorded with the decision")
	}
	if req.GetAcceptHazard() && want != txcoordv1.Decision_DECISION_COMMIT {
		return nil, status.Error(codes.InvalidArgument, "accept_hazard goes with COMMIT: a hazard is a branch of a committed transaction")
	}
	if len(req.GetReason()) > 2000 || len(req.GetOperator()) > 200 {
		return nil, status.Error(codes.InvalidArgument, "reason or operator too long")
	}
	if want == txcoordv1.Decision_DECISION_COMMIT && !s.caller(ctx).Has(authz.Admin) {
		return nil, s.cfg.Authorizer.Deny(ctx, "role", codes.PermissionDenied,
			"%s may not resolve to COMMIT: that is a break-glass decision, for role admin; an operator may resolve to ABORT", s.caller(ctx))
	}
	who := s.identity(ctx, req.GetOperator())
	resp := &txcoordv1.ResolveResponse{}
	if t, ok := s.c.Tx(id); ok {
		// Live: only an abort of a transaction not yet being decided.
		if want == txcoordv1.Decision_DECISION_COMMIT {
			return nil, status.Errorf(codes.FailedPrecondition, "transaction %s is live and undecided; only its client can commit it", id)
		}
		if e, ok := s.lookup(id); ok {
			s.mu.Lock()
			committing := e.commit
			e.rolled = e.rolled || !committing
			s.mu.Unlock()
			if committing {
				return nil, status.Errorf(codes.FailedPrecondition, "transaction %s is being committed by its client right now; ask again in a moment", id)
			}
		}
		if t.Finishing() {
			return nil, status.Errorf(codes.FailedPrecondition, "transaction %s is being decided right now; ask again in a moment", id)
		}
		if err := t.Rollback(ctx); err != nil && !errors.Is(err, coordinator.ErrTxDone) {
			return nil, refused(err)
		}
		resp.Action = "rolled back the live transaction"
	} else {
		var opts []coordinator.ResolveOption
		if req.GetAcceptHazard() {
			opts = append(opts, coordinator.AcceptHazard())
		}
		rep, err := s.c.ResolveHeuristic(ctx, id, want == txcoordv1.Decision_DECISION_COMMIT, who, req.GetReason(), opts...)
		switch {
		case errors.Is(err, wal.ErrConflict):
			return nil, s.contradiction(id, err)
		case errors.Is(err, coordinator.ErrUnknownResource):
			return nil, status.Errorf(codes.FailedPrecondition, "%v; nothing changed", err)
		case errors.Is(err, coordinator.ErrPresumedAborted):
			return nil, status.Errorf(codes.FailedPrecondition, "refused: %v; roll its branches back (--abort)", err)
		case errors.Is(err, coordinator.ErrNothingPrepared):
			return nil, status.Errorf(codes.FailedPrecondition, "%v: nothing to commit (if it was begun here and not committed, it aborted: presumed abort)", err)
		case errors.Is(err, coordinator.ErrLive):
			return nil, status.Errorf(codes.FailedPrecondition, "%v; ask again in a moment", err)
		case err != nil:
			return nil, status.Error(codes.Unavailable, err.Error())
		}
		resp.Heuristic = rep.Heuristic
		resp.DecisionHolder = rep.Holder
		for _, b := range rep.Branches {
			br := &txcoordv1.BranchResult{Participant: b.Resource, Gid: b.GID.String(), Ok: b.Err == nil, Result: "committed"}
			if rep.Decision != wal.KindCommit {
				br.Result = "rolled back"
			}
			if b.Hazard && b.Err == nil {
				br.Result = "not prepared and unproven: hazard accepted"
			}
			if b.Err != nil {
				br.Result = b.Err.Error()
			}
			resp.Branches = append(resp.Branches, br)
		}
		switch {
		case rep.Holder != "":
			done := "committed"
			if rep.Decision != wal.KindCommit {
				done = "rolled back"
			}
			resp.Action = fmt.Sprintf("%s as decision holder %s's row says: drove its %s to %d branches; nothing heuristic logged", done, rep.Holder, rep.Decision, len(rep.Branches))
		case len(rep.Branches) == 0:
			resp.Action = "nothing was prepared: the transaction is aborted (presumed abort); nothing logged"
		case rep.Heuristic:
			resp.Action = fmt.Sprintf("logged a heuristic %s by %s and drove %d branches", rep.Decision, who, len(rep.Branches))
		default:
			resp.Action = fmt.Sprintf("drove the logged %s to %d branches", rep.Decision, len(rep.Branches))
		}
		if !rep.Ended {
			resp.Action += "; some branches could not be finished yet (the recovery pass retries them)"
		}
	}
	s.logger.Info("transaction resolved by request", "txid", id, "decision", want, "who", who, "reason", req.GetReason(), "action", resp.Action)
	if t, ok := s.describe(id); ok {
		resp.Transaction = t
	}
	return resp, nil
}

// contradiction is the refusal of a resolution that would contradict the
// decision of id (err wraps wal.ErrConflict): the one in the log, or, when
// the log has none, the one a decision holder's row keeps (I3).
func (s *Server) contradiction(id ids.TxID, err error) error {
	d, lerr := s.c.Log().Lookup(id)
	if lerr != nil {
		return status.Errorf(codes.FailedPrecondition, "refused: %v; a decision holder's row is never contradicted, so only the decision it keeps can be driven", err)
	}
	if d.Holder != "" {
		return status.Errorf(codes.FailedPrecondition, "refused: %v (noted from decision holder %s's row); a logged decision is never contradicted, so only it can be driven", err, d.Holder)
	}
	return status.Errorf(codes.FailedPrecondition, "refused: %v; a logged decision is never contradicted, so only it can be driven", err)
}

// identity names who asks: the authenticated identity, with the
// operator's own words as a note only.
func (s *Server) identity(ctx context.Context, note string) string {
	who := s.caller(ctx).String()
	if who == authz.Anonymous {
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			who += " at " + p.Addr.String()
		}
	}
	if note != "" {
		who += " (says: " + note + ")"
	}
	return who
}

func (s *Server) Recover(ctx context.Context, _ *txcoordv1.RecoverRequest) (*txcoordv1.RecoverResponse, error) {
	rep, err := s.c.Recover(ctx)
	if err != nil && rep == nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	resp := &txcoordv1.RecoverResponse{
		Redriven: int32(rep.Redriven), Committed: int32(rep.Committed), RolledBack: int32(rep.RolledBack),
		SkippedLive: int32(rep.SkippedLive), SkippedYoung: int32(rep.SkippedYoung), Foreign: int32(rep.Foreign),
		Fenced: int32(rep.Fenced), Held: int32(rep.Held), Forgotten: int32(rep.Forgotten),
	}
	for _, u := range rep.Unfinished {
		resp.Unfinished = append(resp.Unfinished, u.String())
	}
	seen := map[ids.TxID]bool{}
	for _, h := range rep.Hazards {
		if !seen[h.TxID] {
			seen[h.TxID] = true
			resp.Hazards = append(resp.Hazards, h.TxID.String())
		}
	}
	resp.Down = append(resp.Down, rep.Down...)
	for _, e := range rep.Errors {
		resp.Errors = append(resp.Errors, e.Error())
	}
	if err != nil {
		resp.Errors = append(resp.Errors, err.Error())
	}
	for _, a := range rep.Actions {
		r := &txcoordv1.BranchResult{Participant: a.Resource, Gid: a.GID, Result: a.What, Ok: a.Err == nil}
		if a.Holder != "" {
			r.Result += " as decision holder " + a.Holder + "'s row says"
		}
		if a.Err != nil {
			r.Result += ": " + a.Err.Error()
		}
		resp.Actions = append(resp.Actions, r)
	}
	return resp, nil
}
