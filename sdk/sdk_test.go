package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/ids"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"github.com/txcoord/txcoord/sdk"
	"github.com/txcoord/txcoord/server"
	"github.com/txcoord/txcoord/wal"

	_ "github.com/lib/pq"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var insecureDial = grpc.WithTransportCredentials(insecure.NewCredentials())

// coord is a txcoord server on loopback over a bbolt log in dir.
type coord struct {
	c    *coordinator.Coordinator
	srv  *server.Server
	log  *wal.Bolt
	gs   *grpc.Server
	addr string
	stop context.CancelFunc
	done chan struct{}
}

func startCoord(t *testing.T, dir, addr string) *coord { return startCoordWith(t, dir, addr, nil) }

// startCoordWith is startCoord with the coordinator's configuration
// changed by mod.
func startCoordWith(t *testing.T, dir, addr string, mod func(*coordinator.Config)) *coord {
	t.Helper()
	log, err := wal.OpenBolt(filepath.Join(dir, "txcoord.wal"), wal.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := coordinator.Config{ID: "c1", Log: log, RecoveryInterval: -1,
		InDoubtTimeout: time.Second, CallTimeout: 3 * time.Second, RetryBase: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	c, err := coordinator.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Coordinator: c, DialOptions: []grpc.DialOption{insecureDial}, Authorizer: authz.Insecure()})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	ctx, stop := context.WithCancel(context.Background())
	k := &coord{c: c, srv: srv, log: log, gs: gs, addr: lis.Addr().String(), stop: stop, done: make(chan struct{})}
	go func() { defer close(k.done); srv.Run(ctx) }()
	return k
}

func (k *coord) close() {
	k.gs.Stop()
	k.stop()
	<-k.done
	k.c.Close()
	k.srv.Close()
	k.log.Close()
}

// service is one participant service: its database and its gRPC server.
type service struct {
	p    *sdk.Participant
	res  *postgres.Resource
	gs   *grpc.Server
	addr string
	stop context.CancelFunc
	done chan struct{}
}

func startService(t *testing.T, name, dsn string, coordConn *grpc.ClientConn, mods ...func(*sdk.Config)) *service {
	t.Helper()
	return startServiceWith(t, name, dsn, coordConn, nil, mods...)
}

// startServiceWith is startService with the gRPC server's options given.
func startServiceWith(t *testing.T, name, dsn string, coordConn *grpc.ClientConn, opts []grpc.ServerOption, mods ...func(*sdk.Config)) *service {
	t.Helper()
	ctx := context.Background()
	res, err := postgres.Open(ctx, name, "postgres", dsn, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := sdk.Config{Name: name, Address: lis.Addr().String(), Coordinator: coordConn, Resource: res,
		InDoubtTimeout: time.Hour, CheckInterval: time.Hour, CallTimeout: 3 * time.Second, InsecureAnyCaller: true}
	for _, m := range mods {
		m(&cfg)
	}
	p, err := sdk.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(append(opts, grpc.UnaryInterceptor(sdk.UnaryServerInterceptor()))...)
	p.Register(gs)
	gs.RegisterService(bankDesc(p, client.New(coordConn)), nil)
	go func() { _ = gs.Serve(lis) }()
	rctx, stop := context.WithCancel(ctx)
	s := &service{p: p, res: res, gs: gs, addr: lis.Addr().String(), stop: stop, done: make(chan struct{})}
	go func() { defer close(s.done); _ = p.Run(rctx) }()
	return s
}

func (s *service) close() {
	s.gs.Stop()
	s.stop()
	<-s.done
	s.res.Close()
}

const accounts, initial = 10, 100

func setupDBs(t *testing.T) (*pgtest.Server, []string) {
	t.Helper()
	pg := pgtest.StartT(t, pgtest.Options{})
	ctx := context.Background()
	var dsns []string
	for _, db := range []string{"bank_a", "bank_b"} {
		if err := pg.CreateDB(ctx, db); err != nil {
			t.Fatal(err)
		}
		res, err := postgres.Open(ctx, "setup", "postgres", pg.DSN(db), postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := res.DB().ExecContext(ctx, fmt.Sprintf(`CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0));
			INSERT INTO accounts SELECT g, %d FROM generate_series(1, %d) g`, initial, accounts)); err != nil {
			t.Fatal(err)
		}
		res.Close()
		dsns = append(dsns, pg.DSN(db))
	}
	return pg, dsns
}

func total(t *testing.T, svcs ...*service) int {
	t.Helper()
	sum := 0
	for _, s := range svcs {
		var n int
		if err := s.res.DB().QueryRow("SELECT sum(balance) FROM accounts").Scan(&n); err != nil {
			t.Fatal(err)
		}
		sum += n
	}
	return sum
}

func prepared(t *testing.T, svcs ...*service) int {
	t.Helper()
	n := 0
	for _, s := range svcs {
		list, err := s.res.Prepared(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		n += len(list)
	}
	return n
}

func move(ctx context.Context, s *service, acct, delta int) error {
	return s.p.Branch(ctx, func(ctx context.Context, b *postgres.Branch) error {
		_, err := b.ExecContext(ctx, "UPDATE accounts SET balance = balance + $1 WHERE id = $2", delta, acct)
		return err
	})
}

// Transfers between two services' databases through a txcoord server:
// every transfer commits in both or in neither.
func TestTransfersAcrossServices(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	_, dsns := setupDBs(t)
	k := startCoord(t, t.TempDir(), "127.0.0.1:0")
	defer k.close()
	cc, err := grpc.NewClient(k.addr, insecureDial)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	a, b := startService(t, "bank_a", dsns[0], cc), startService(t, "bank_b", dsns[1], cc)
	defer a.close()
	defer b.close()
	cl := client.New(cc)
	ctx := context.Background()

	var mu sync.Mutex
	outcomes := map[client.Outcome]int{}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 15; i++ {
				n := w*15 + i
				amount := 10 + n%7*10
				err := cl.Run(ctx, func(ctx context.Context) error {
					if err := move(ctx, a, 1+n%accounts, -amount); err != nil {
						return err // overdraft: the CHECK constraint fails
					}
					if err := move(ctx, b, 1+(n*3)%accounts, amount); err != nil {
						return err
					}
					if n%5 == 0 {
						return errors.New("cancelled on purpose")
					}
					return nil
				})
				mu.Lock()
				outcomes[client.OutcomeOf(err)]++
				mu.Unlock()
				if o := client.OutcomeOf(err); o == client.Unknown {
					t.Errorf("transfer %d: outcome unknown: %v", n, err)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("outcomes: %v", outcomes)
	if outcomes[client.Committed] == 0 || outcomes[client.Aborted] < 12 {
		t.Fatalf("want commits and at least the 12 aborts on purpose, got %v", outcomes)
	}
	if got := total(t, a, b); got != 2*accounts*initial {
		t.Fatalf("total %d, want %d", got, 2*accounts*initial)
	}
	if n := prepared(t, a, b); n != 0 {
		t.Fatalf("%d branches left prepared", n)
	}
	st := k.c.Stats()
	if int(st.Committed) != outcomes[client.Committed] {
		t.Fatalf("coordinator counted %d commits, clients %d", st.Committed, outcomes[client.Committed])
	}
}

// A branch prepared and registered, whose coordinator restarts before a
// decision: the participant asks, hears "aborted" (presumed abort), and
// rolls it back. A branch of a committed transaction whose participant was
// unreachable in phase two commits when it asks.
func TestParticipantSettlesInDoubtBranches(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	_, dsns := setupDBs(t)
	dir := t.TempDir()
	k := startCoord(t, dir, "127.0.0.1:0")
	addr := k.addr
	cc, err := grpc.NewClient(addr, insecureDial)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	a, b := startService(t, "bank_a", dsns[0], cc), startService(t, "bank_b", dsns[1], cc)
	defer a.close()
	defer b.close()
	cl := client.New(cc)
	ctx := context.Background()

	// 1. Undecided, then the coordinator restarts.
	tx, err := cl.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := move(tx.Context(ctx), a, 1, -10); err != nil {
		t.Fatal(err)
	}
	if n := prepared(t, a); n != 1 {
		t.Fatalf("want the branch prepared, got %d", n)
	}
	k.close()
	k = startCoord(t, dir, addr)
	// Settle until nothing is prepared: a rollback of the same gid still
	// running elsewhere (the old coordinator's call, cut at its close)
	// makes one pass answer "busy", and the service's connection to the
	// restarted coordinator may still be backing off (UNAVAILABLE).
	for deadline := time.Now().Add(10 * time.Second); prepared(t, a) > 0; {
		_, err := a.p.Settle(ctx)
		if err != nil && !errors.Is(err, participant.ErrBusy) && status.Code(err) != codes.Unavailable && !strings.Contains(err.Error(), "code = Unavailable") {
			t.Fatalf("settle: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("still prepared after 10s of settling (last error: %v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := prepared(t, a); n != 0 || total(t, a) != accounts*initial {
		t.Fatalf("after settling: %d prepared, total %d", n, total(t, a))
	}
	if err := tx.Commit(ctx); client.OutcomeOf(err) != client.Aborted {
		t.Fatalf("commit after the coordinator forgot the transaction: %v; want aborted", err)
	}

	// 2. Committed while bank_b cannot be reached.
	tx, err = cl.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := move(tx.Context(ctx), a, 2, -10); err != nil {
		t.Fatal(err)
	}
	if err := move(tx.Context(ctx), b, 2, 10); err != nil {
		t.Fatal(err)
	}
	b.gs.Stop() // phase two cannot reach bank_b
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	err = tx.Commit(cctx)
	cancel()
	if client.OutcomeOf(err) != client.Committed {
		t.Fatalf("commit: %v", err)
	}
	if n, err := b.p.Settle(ctx); err != nil || n != 1 {
		t.Fatalf("bank_b settle: %d %v", n, err)
	}
	k.close()
	if n := prepared(t, a, b); n != 0 {
		t.Fatalf("%d branches left prepared", n)
	}
	var a2, b2 int
	if err := a.res.DB().QueryRow("SELECT balance FROM accounts WHERE id = 2").Scan(&a2); err != nil {
		t.Fatal(err)
	}
	if err := b.res.DB().QueryRow("SELECT balance FROM accounts WHERE id = 2").Scan(&b2); err != nil {
		t.Fatal(err)
	}
	if a2 != initial-10 || b2 != initial+10 {
		t.Fatalf("balances %d and %d: the transfer did not land in both", a2, b2)
	}
}

// Without anyone calling Settle: a branch prepared longer than the
// in-doubt timeout asks the coordinator by itself.
func TestInDoubtBranchAsksByItself(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	_, dsns := setupDBs(t)
	dir := t.TempDir()
	k := startCoord(t, dir, "127.0.0.1:0")
	addr := k.addr
	cc, err := grpc.NewClient(addr, insecureDial)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	a := startService(t, "bank_a", dsns[0], cc, func(c *sdk.Config) {
		c.InDoubtTimeout, c.CheckInterval = 300*time.Millisecond, 50*time.Millisecond
	})
	defer a.close()
	ctx := context.Background()
	tx, err := client.New(cc).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := move(tx.Context(ctx), a, 1, -10); err != nil {
		t.Fatal(err)
	}
	// While the transaction is live, asking changes nothing.
	time.Sleep(600 * time.Millisecond)
	if n := prepared(t, a); n != 1 {
		t.Fatalf("a branch of a live transaction was resolved: %d prepared", n)
	}
	k.close()
	k = startCoord(t, dir, addr)
	defer k.close()
	deadline := time.Now().Add(10 * time.Second)
	for prepared(t, a) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the in-doubt branch was not rolled back within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := total(t, a); got != accounts*initial {
		t.Fatalf("total %d", got)
	}
	if st := a.p.Stats(); st.Resolved != 1 || st.Aborted != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// Through a server whose decision holder is a database of its own: the
// services name the holder in their gids, the server's holder branch
// commits the decision, and nothing is forced to the server's log; a
// transaction begun WithLoggedDecision logs it.
func TestTransfersAcrossServicesWithADecisionHolder(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	pg, dsns := setupDBs(t)
	ctx := context.Background()
	if err := pg.CreateDB(ctx, "ledger"); err != nil {
		t.Fatal(err)
	}
	ledger, err := postgres.Open(ctx, "ledger", "postgres", pg.DSN("ledger"), postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ledger.Close()
	k := startCoordWith(t, t.TempDir(), "127.0.0.1:0", func(c *coordinator.Config) {
		c.Resources = []participant.Resource{ledger}
		c.Holder = "ledger"
	})
	defer k.close()
	cc, err := grpc.NewClient(k.addr, insecureDial)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	a, b := startService(t, "bank_a", dsns[0], cc), startService(t, "bank_b", dsns[1], cc)
	defer a.close()
	defer b.close()
	cl := client.New(cc)
	transfer := func(n int, opts ...client.TxOption) error {
		return cl.Run(ctx, func(ctx context.Context) error {
			if err := move(ctx, a, 1+n%accounts, -5); err != nil {
				return err
			}
			return move(ctx, b, 1+n%accounts, 5)
		}, opts...)
	}
	tx, err := cl.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h, ok := tx.DecisionHolder(); !ok || h != "ledger" {
		t.Fatalf("decision holder %q %v", h, ok)
	}
	_ = tx.Rollback(ctx, "only looking")
	for n := 0; n < 10; n++ {
		if err := transfer(n); err != nil {
			t.Fatalf("transfer %d: %v", n, err)
		}
	}
	if st := k.c.Stats(); st.Held != 10 || k.log.Stats().Appends != 0 {
		t.Fatalf("stats %+v, log %+v: want 10 decisions held by the ledger and none forced to the log", st, k.log.Stats())
	}
	if err := transfer(10, client.WithLoggedDecision()); err != nil {
		t.Fatal(err)
	}
	if k.log.Stats().Appends != 1 {
		t.Fatalf("log %+v: a transaction begun WithLoggedDecision must log its decision", k.log.Stats())
	}
	if got := total(t, a, b); got != 2*accounts*initial {
		t.Fatalf("total %d, want %d", got, 2*accounts*initial)
	}
	if n := prepared(t, a, b); n != 0 {
		t.Fatalf("%d branches left prepared", n)
	}
	if _, err := cl.Begin(ctx, client.WithDecisionHolder("nope")); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("an unknown holder: %v", err)
	}
}

// F6: a participant serves one coordinator instance. A second coordinator
// with the same id but another log refuses the participant's branches
// (they are rolled back at once, so it never decides them) and the
// participant refuses its calls; a restart of the first coordinator (the
// same log, a later run) is served.
func TestASecondCoordinatorWithTheSameIDIsRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	_, dsns := setupDBs(t)
	dir1 := t.TempDir()
	k := startCoord(t, dir1, "127.0.0.1:0")
	addr := k.addr
	cc, err := grpc.NewClient(addr, insecureDial)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	a := startService(t, "bank_a", dsns[0], cc)
	defer a.close()
	cl := client.New(cc)
	ctx := context.Background()
	transfer := func() error {
		return cl.Run(ctx, func(ctx context.Context) error { return move(ctx, a, 1, -1) })
	}
	if err := transfer(); err != nil {
		t.Fatalf("through the first coordinator: %v", err)
	}
	first := k.log.LogID()
	k.close()

	// Another coordinator with the same id, on a new log, at the same
	// address.
	k = startCoord(t, t.TempDir(), addr)
	if k.log.LogID() == first {
		t.Fatal("the second log has the first one's id")
	}
	err = transfer()
	if client.OutcomeOf(err) != client.Aborted || !strings.Contains(err.Error(), "another coordinator with the same id") {
		t.Fatalf("through a second coordinator with the same id: %v; want aborted, refused", err)
	}
	if n := prepared(t, a); n != 0 {
		t.Fatalf("%d branches left prepared", n)
	}
	if got := total(t, a); got != accounts*initial-1 {
		t.Fatalf("total %d, want %d (only the first transfer)", got, accounts*initial-1)
	}
	// Its calls to the participant are refused too.
	pc, err := grpc.NewClient(a.addr, insecureDial)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	owner, logID, epoch := k.c.Instance()
	mctx := metadata.AppendToOutgoingContext(ctx, remote.InstanceMetadataKey, remote.FormatInstance(owner, logID, epoch))
	_, err = txcoordv1.NewParticipantClient(pc).ListPrepared(mctx, &txcoordv1.ListPreparedRequest{})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), first) {
		t.Fatalf("ListPrepared from the second coordinator: %v; want FAILED_PRECONDITION naming the served log", err)
	}
	k.close()

	// The first coordinator again: the same log, a later run.
	k = startCoord(t, dir1, addr)
	defer k.close()
	if err := transfer(); err != nil {
		t.Fatalf("through the first coordinator, restarted: %v", err)
	}
}

// F2 through services: a branch rolled back by hand at a service's
// database after it was prepared and registered is answered NOT_FOUND
// (no marker proves it committed), and the client hears a heuristic
// hazard, not "committed"; the branch that could commit did.
func TestABranchRolledBackByHandAtAServiceIsAHazard(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	_, dsns := setupDBs(t)
	k := startCoord(t, t.TempDir(), "127.0.0.1:0")
	defer k.close()
	cc, err := grpc.NewClient(k.addr, insecureDial)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	a, b := startService(t, "bank_a", dsns[0], cc), startService(t, "bank_b", dsns[1], cc)
	defer a.close()
	defer b.close()
	ctx := context.Background()
	tx, err := client.New(cc).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := move(tx.Context(ctx), a, 1, -10); err != nil {
		t.Fatal(err)
	}
	if err := move(tx.Context(ctx), b, 1, 10); err != nil {
		t.Fatal(err)
	}
	var gid string
	if err := a.res.DB().QueryRowContext(ctx, "SELECT gid FROM pg_prepared_xacts").Scan(&gid); err != nil {
		t.Fatal(err)
	}
	if _, err := a.res.DB().ExecContext(ctx, "ROLLBACK PREPARED '"+gid+"'"); err != nil {
		t.Fatal(err)
	}
	err = tx.Commit(ctx)
	if !errors.Is(err, client.ErrHeuristicHazard) || client.OutcomeOf(err) != client.Hazard {
		t.Fatalf("Commit = %v; want a heuristic hazard", err)
	}
	if got := total(t, a); got != accounts*initial {
		t.Fatalf("bank_a total %d: its branch was rolled back by hand", got)
	}
	if got := total(t, b); got != accounts*initial+10 {
		t.Fatalf("bank_b total %d: its branch should have committed", got)
	}
	if k.c.Hazard(tx.ID()) == nil {
		t.Fatal("the coordinator does not list the hazard")
	}
}

// CommitBatch answers each branch as Commit would: committed ones OK (also
// when asked again), an unknown gid NOT_FOUND, a malformed or foreign one
// INVALID_ARGUMENT; a batch too long or naming a gid twice is refused
// whole, and commits nothing.
func TestCommitBatchAnswersEachBranch(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	_, dsns := setupDBs(t)
	k := startCoord(t, t.TempDir(), "127.0.0.1:0")
	defer k.close()
	cc, err := grpc.NewClient(k.addr, insecureDial)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	a := startService(t, "bank_a", dsns[0], cc)
	defer a.close()
	ctx := context.Background()

	// Branches of coordinator c9: the running coordinator (c1) leaves
	// them alone.
	prepare := func(branch string, acct int) ids.GID {
		t.Helper()
		id, err := ids.NewTxID()
		if err != nil {
			t.Fatal(err)
		}
		g, err := ids.NewGID("txc", "c9", id, branch)
		if err != nil {
			t.Fatal(err)
		}
		b, err := a.res.Begin(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.(*postgres.Branch).ExecContext(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = $1", acct); err != nil {
			t.Fatal(err)
		}
		if v, err := b.Prepare(ctx); v != participant.VoteYes {
			t.Fatalf("vote %v: %v", v, err)
		}
		return g
	}
	g1, g2, g3 := prepare("bank_a-1", 1), prepare("bank_a-2", 2), prepare("bank_a-3", 3)
	id, _ := ids.NewTxID()
	unknown, _ := ids.NewGID("txc", "c9", id, "bank_a-9")
	foreign, _ := ids.NewGID("txc", "c9", id, "bank_b-1")

	pc, err := grpc.NewClient(a.addr, insecureDial)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	p := txcoordv1.NewParticipantClient(pc)

	// Refused whole: too many gids, or one twice. g3 stays prepared.
	var many []string
	for range remote.MaxCommitBatch + 1 {
		many = append(many, g3.String())
	}
	for _, gids := range [][]string{many, {g3.String(), g3.String()}} {
		if _, err := p.CommitBatch(ctx, &txcoordv1.CommitBatchRequest{Gids: gids}); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("batch of %d: %v, want INVALID_ARGUMENT", len(gids), err)
		}
	}
	if n := prepared(t, a); n != 3 {
		t.Fatalf("%d prepared after refused batches, want 3", n)
	}

	gids := []string{g1.String(), unknown.String(), "not a gid", g2.String(), foreign.String()}
	want := []codes.Code{codes.OK, codes.NotFound, codes.InvalidArgument, codes.OK, codes.InvalidArgument}
	for round := range 2 { // the second time, g1 and g2 are known committed
		resp, err := p.CommitBatch(ctx, &txcoordv1.CommitBatchRequest{Gids: gids})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetResults()) != len(gids) {
			t.Fatalf("%d results for %d gids", len(resp.GetResults()), len(gids))
		}
		for i, r := range resp.GetResults() {
			if r.GetGid() != gids[i] || codes.Code(r.GetCode()) != want[i] {
				t.Errorf("round %d, result %d: %s %v %q, want %s %v", round, i, r.GetGid(), codes.Code(r.GetCode()), r.GetMessage(), gids[i], want[i])
			}
		}
	}
	var b1, b2, b3 int
	if err := a.res.DB().QueryRow("SELECT (SELECT balance FROM accounts WHERE id = 1), (SELECT balance FROM accounts WHERE id = 2), (SELECT balance FROM accounts WHERE id = 3)").Scan(&b1, &b2, &b3); err != nil {
		t.Fatal(err)
	}
	if b1 != initial+1 || b2 != initial+1 || b3 != initial {
		t.Fatalf("balances %d %d %d, want %d %d %d", b1, b2, b3, initial+1, initial+1, initial)
	}
	if n := prepared(t, a); n != 1 {
		t.Fatalf("%d prepared, want only g3", n)
	}
	if err := a.res.Rollback(ctx, g3); err != nil {
		t.Fatal(err)
	}
}
