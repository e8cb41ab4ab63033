package main

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"time"

	"github.com/txcoord/txcoord/authz"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/internal/saga"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/sdk"
	"github.com/txcoord/txcoord/server"
	"github.com/txcoord/txcoord/wal"
)

// opOutcome is what one operation did.
type opOutcome struct {
	committed bool
	aborted   bool  // a business failure, rolled back (or compensated)
	err       error // anything else: outcome unknown, a database down
	partial   bool  // some steps committed and others never will (no atomicity)
	// first and last commit of a step: between them the change is partly
	// visible (sagas, independent commits).
	first, last time.Time
	hold        time.Duration // the longest any row of it stayed locked
}

type cmpMode interface {
	op(ctx context.Context, p saga.Plan) opOutcome
	// windows returns the phase-two windows seen (2PC only).
	windows() []time.Duration
	// finish settles everything left in flight (recovery) before the check.
	finish(ctx context.Context) error
	close()
}

var errClosedAccount = errors.New("the account refuses the transfer")

const stepSQL = `UPDATE accounts SET balance = balance + $1 WHERE id = $2`

// noneMode commits each step on its own: no atomicity.
type noneMode struct{ dbs []*sql.DB }

func (m *noneMode) op(ctx context.Context, p saga.Plan) opOutcome {
	var o opOutcome
	for _, st := range p.Steps {
		t0 := time.Now()
		r, err := m.dbs[st.DB].ExecContext(ctx, stepSQL, st.Delta, st.Account)
		o.hold = max(o.hold, time.Since(t0))
		if err == nil {
			if n, _ := r.RowsAffected(); n != 1 {
				err = errClosedAccount
			}
		}
		if err != nil {
			o.partial = !o.first.IsZero()
			if errors.Is(err, errClosedAccount) {
				o.aborted = true
			} else {
				o.err = err
			}
			return o
		}
		now := time.Now()
		if o.first.IsZero() {
			o.first = now
		}
		o.last = now
	}
	o.committed = true
	return o
}
func (m *noneMode) windows() []time.Duration     { return nil }
func (m *noneMode) finish(context.Context) error { return nil }
func (m *noneMode) close()                       {}

// windowSink collects phase-two windows from coordinator.Config.Observe.
type windowSink struct {
	mu sync.Mutex
	ds []time.Duration
}

func (s *windowSink) observe(p coordinator.Phase, d time.Duration, err error) {
	if p != coordinator.PhaseCommit || err != nil {
		return
	}
	s.mu.Lock()
	s.ds = append(s.ds, d)
	s.mu.Unlock()
}

func (s *windowSink) windows() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.ds...)
}

// twoPCMode runs the operation through the coordinator library: with
// the decision logged in bbolt, or (holder) committed by the first
// database's branch in its own database, with no log write.
type twoPCMode struct {
	windowSink
	c    *coordinator.Coordinator
	log  *wal.Bolt
	res  []*postgres.Resource
	opts []coordinator.TxOption
}

func newTwoPC(ctx context.Context, dir string, dbs []*sql.DB, names []string, holder bool) (*twoPCMode, error) {
	m := &twoPCMode{opts: []coordinator.TxOption{coordinator.WithoutHolder()}}
	if holder {
		m.opts = []coordinator.TxOption{coordinator.WithHolder(names[0])}
	}
	var rs []participant.Resource
	for i, db := range dbs {
		r, err := postgres.New(ctx, names[i], db, postgres.Options{})
		if err != nil {
			return nil, err
		}
		m.res = append(m.res, r)
		rs = append(rs, r)
	}
	var err error
	if m.log, err = wal.OpenBolt(filepath.Join(dir, "2pc.wal"), wal.BoltOptions{}); err != nil {
		return nil, err
	}
	m.c, err = coordinator.New(ctx, coordinator.Config{ID: "bench2pc", Log: m.log, Resources: rs,
		RecoveryInterval: time.Second, InDoubtTimeout: 2 * time.Second, CallTimeout: 5 * time.Second, Observe: m.observe})
	if err != nil {
		m.log.Close()
		return nil, err
	}
	return m, nil
}

func (m *twoPCMode) op(ctx context.Context, p saga.Plan) opOutcome {
	t0 := time.Now()
	err := m.c.Do(ctx, func(ctx context.Context, tx *coordinator.Tx) error {
		branches := map[int]*postgres.Branch{}
		for _, st := range p.Steps {
			b := branches[st.DB]
			if b == nil {
				var err error
				if b, err = m.res[st.DB].Enlist(ctx, tx); err != nil {
					return err
				}
				branches[st.DB] = b
			}
			r, err := b.ExecContext(ctx, stepSQL, st.Delta, st.Account)
			if err != nil {
				return err
			}
			if n, _ := r.RowsAffected(); n != 1 {
				return errClosedAccount
			}
		}
		return nil
	}, m.opts...)
	return twoPCOutcome(err, errors.Is(err, errClosedAccount), coordinator.OutcomeOf(err) == coordinator.Committed, coordinator.OutcomeOf(err) == coordinator.Aborted, time.Since(t0))
}

func twoPCOutcome(err error, business, committed, aborted bool, latency time.Duration) opOutcome {
	// Rows stay locked from the first UPDATE to COMMIT PREPARED: about the
	// whole operation.
	o := opOutcome{hold: latency}
	switch {
	case committed:
		o.committed = true
	case aborted && business:
		o.aborted = true
	default:
		o.err = err
	}
	return o
}

func (m *twoPCMode) finish(ctx context.Context) error {
	return settle2PC(ctx, m.c, m.res)
}

// settle2PC runs recovery passes until no decision is pending and no
// branch of ours is prepared.
func settle2PC(ctx context.Context, c *coordinator.Coordinator, res []*postgres.Resource) error {
	deadline := time.Now().Add(time.Minute)
	for {
		_, rerr := c.Recover(ctx)
		left := c.Stats().Log.Pending
		for _, r := range res {
			ps, err := r.Prepared(ctx)
			if err != nil {
				rerr = err
			}
			left += len(ps)
		}
		if left == 0 && rerr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still %d unfinished after a minute of recovery: %v", left, rerr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (m *twoPCMode) close() {
	m.c.Close()
	m.log.Close()
}

// sagaMode runs the operation as an orchestrated saga.
type sagaMode struct {
	o   *saga.Orchestrator
	log *saga.Log
}

func newSaga(dir string, dbs []*sql.DB) (*sagaMode, error) {
	log, err := saga.OpenLog(filepath.Join(dir, "saga.log"))
	if err != nil {
		return nil, err
	}
	return &sagaMode{o: saga.New(log, dbs), log: log}, nil
}

func (m *sagaMode) op(ctx context.Context, p saga.Plan) opOutcome {
	res, err := m.o.Run(ctx, p)
	o := opOutcome{first: res.FirstCommit, last: res.LastCommit, hold: res.MaxHold}
	switch {
	case err == nil:
		o.committed = true
	case errors.Is(err, saga.ErrAborted) && errors.Is(err, saga.ErrClosedAccount):
		o.aborted = true
	default:
		o.err = err
	}
	return o
}
func (m *sagaMode) windows() []time.Duration { return nil }
func (m *sagaMode) finish(ctx context.Context) error {
	_, err := m.o.Recover(ctx)
	return err
}
func (m *sagaMode) close() { m.log.Close() }

// grpcMode runs the operation through a txcoord server: the client calls
// one bank service per database, each joining with the SDK.
// grpcCoordinatorID is the id of the txcoord server the gRPC modes run:
// the gids of its transactions start with "txc." and this id.
const grpcCoordinatorID = "benchgrpc"

type grpcMode struct {
	windowSink
	log     *wal.Bolt
	c       *coordinator.Coordinator
	srv     *server.Server
	cancel  context.CancelFunc
	done    chan struct{}
	servers []*grpc.Server
	conns   []*grpc.ClientConn
	cl      *client.Client
	banks   []*grpc.ClientConn
	parts   []*sdk.Participant
	res     []*postgres.Resource
}

// pack puts an account and a delta in one int64 for the Move call.
func pack(account, delta int64) int64 { return account<<32 | int64(uint32(int32(delta))) }
func unpack(v int64) (account, delta int64) {
	return v >> 32, int64(int32(uint32(v)))
}

func bankDesc(name string, p *sdk.Participant) *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: "txbench." + name,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Move",
			Handler: func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				in := &wrapperspb.BytesValue{}
				if err := dec(in); err != nil {
					return nil, err
				}
				h := func(ctx context.Context, req any) (any, error) {
					moves := req.(*wrapperspb.BytesValue).GetValue()
					if len(moves) == 0 || len(moves)%8 != 0 {
						return nil, status.Error(codes.InvalidArgument, "txbench: moves are 8 bytes each")
					}
					err := p.Branch(ctx, func(ctx context.Context, b *postgres.Branch) error {
						for ; len(moves) > 0; moves = moves[8:] {
							account, delta := unpack(int64(binary.BigEndian.Uint64(moves)))
							r, err := b.ExecContext(ctx, stepSQL, delta, account)
							if err != nil {
								return err
							}
							if n, _ := r.RowsAffected(); n != 1 {
								return errClosedAccount
							}
						}
						return nil
					})
					return &emptypb.Empty{}, err
				}
				if icpt == nil {
					return h(ctx, in)
				}
				return icpt(ctx, in, &grpc.UnaryServerInfo{FullMethod: "/txbench." + name + "/Move"}, h)
			},
		}},
	}
}

func newGRPCMode(ctx context.Context, dir string, dbs []*sql.DB, names []string) (m *grpcMode, err error) {
	m = &grpcMode{done: make(chan struct{})}
	defer func() {
		if err != nil {
			m.close()
		}
	}()
	dial := grpc.WithTransportCredentials(insecure.NewCredentials())
	if m.log, err = wal.OpenBolt(filepath.Join(dir, "grpc.wal"), wal.BoltOptions{}); err != nil {
		return m, err
	}
	if m.c, err = coordinator.New(ctx, coordinator.Config{ID: grpcCoordinatorID, Log: m.log, RecoveryInterval: time.Second,
		InDoubtTimeout: 2 * time.Second, CallTimeout: 5 * time.Second, Observe: m.observe}); err != nil {
		return m, err
	}
	if m.srv, err = server.New(server.Config{Coordinator: m.c, DialOptions: []grpc.DialOption{dial}, Authorizer: authz.Insecure()}); err != nil {
		return m, err
	}
	listen := func(gs *grpc.Server) (string, error) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		m.servers = append(m.servers, gs)
		go func() { _ = gs.Serve(lis) }()
		return lis.Addr().String(), nil
	}
	cs := grpc.NewServer()
	m.srv.Register(cs)
	caddr, err := listen(cs)
	if err != nil {
		return m, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() { defer close(m.done); m.srv.Run(runCtx) }()
	return m, m.attach(ctx, caddr, dbs, names, func(name, addr string) error {
		_, err := m.srv.AddParticipant(name, addr)
		return err
	})
}

// newRemoteGRPCMode is newGRPCMode against a txcoord server that runs
// elsewhere (another process) at caddr: the participants tell it where
// they are with their first branch.
func newRemoteGRPCMode(ctx context.Context, caddr string, dbs []*sql.DB, names []string) (m *grpcMode, err error) {
	m = &grpcMode{}
	if err := m.attach(ctx, caddr, dbs, names, nil); err != nil {
		m.close()
		return nil, err
	}
	return m, nil
}

// attach connects the client to the coordinator at caddr and serves one
// SDK participant per database; add, if set, tells the server where each
// is.
func (m *grpcMode) attach(ctx context.Context, caddr string, dbs []*sql.DB, names []string, add func(name, addr string) error) error {
	dial := grpc.WithTransportCredentials(insecure.NewCredentials())
	cc, err := grpc.NewClient(caddr, dial)
	if err != nil {
		return err
	}
	m.conns = append(m.conns, cc)
	m.cl = client.New(cc)
	for i, db := range dbs {
		res, err := postgres.New(ctx, names[i], db, postgres.Options{})
		if err != nil {
			return err
		}
		m.res = append(m.res, res)
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		p, err := sdk.New(sdk.Config{Name: names[i], Address: lis.Addr().String(), Coordinator: cc, Resource: res,
			InDoubtTimeout: 2 * time.Second, CheckInterval: time.Second, InsecureAnyCaller: true})
		if err != nil {
			lis.Close()
			return err
		}
		m.parts = append(m.parts, p)
		gs := grpc.NewServer(grpc.UnaryInterceptor(sdk.UnaryServerInterceptor()))
		p.Register(gs)
		gs.RegisterService(bankDesc(names[i], p), nil)
		m.servers = append(m.servers, gs)
		go func() { _ = gs.Serve(lis) }()
		if add != nil {
			if err := add(names[i], lis.Addr().String()); err != nil {
				return err
			}
		}
		conn, err := grpc.NewClient(lis.Addr().String(), dial, grpc.WithUnaryInterceptor(client.UnaryClientInterceptor()))
		if err != nil {
			return err
		}
		m.conns = append(m.conns, conn)
		m.banks = append(m.banks, conn)
	}
	return nil
}

func (m *grpcMode) op(ctx context.Context, p saga.Plan) opOutcome {
	t0 := time.Now()
	business := false
	// One call per database, its steps in order: a service joins one
	// branch per call, and two branches of one transaction in one
	// database would wait for each other behind a locking reader.
	var order []int
	moves := map[int][]byte{}
	closed := map[int]bool{}
	for _, st := range p.Steps {
		if _, ok := moves[st.DB]; !ok {
			order = append(order, st.DB)
		}
		moves[st.DB] = binary.BigEndian.AppendUint64(moves[st.DB], uint64(pack(st.Account, st.Delta)))
		closed[st.DB] = closed[st.DB] || st.Account < 0
	}
	err := m.cl.Run(ctx, func(ctx context.Context) error {
		for _, db := range order {
			name := m.res[db].Name()
			if err := m.banks[db].Invoke(ctx, "/txbench."+name+"/Move", wrapperspb.Bytes(moves[db]), &emptypb.Empty{}); err != nil {
				business = closed[db]
				return err
			}
		}
		return nil
	})
	return twoPCOutcome(err, business, client.OutcomeOf(err) == client.Committed, client.OutcomeOf(err) == client.Aborted, time.Since(t0))
}

func (m *grpcMode) finish(ctx context.Context) error {
	for _, p := range m.parts {
		if _, err := p.Settle(ctx); err != nil {
			return err
		}
	}
	return settle2PC(ctx, m.c, m.res)
}

func (m *grpcMode) close() {
	for _, c := range m.conns {
		_ = c.Close()
	}
	for _, gs := range m.servers {
		gs.Stop()
	}
	if m.cancel != nil {
		m.cancel()
		<-m.done
	}
	if m.c != nil {
		m.c.Close()
	}
	if m.srv != nil {
		m.srv.Close()
	}
	if m.log != nil {
		m.log.Close()
	}
}
