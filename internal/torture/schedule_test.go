package torture

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/txcoord/txcoord/internal/failpoint"
)

// The topology: names of the processes, database servers and links that
// faults target.
const coordName = "txcoord"

// coordB is the second coordinator of a failover run: both serve one
// coordinator id, their log on an etcd cluster, one the primary and the
// other a standby that takes over when the primary dies or is cut off.
const coordB = "txcoord-b"

// etcdName is the etcd cluster, as one end of a link.
const etcdName = "etcd"

// coordinators lists the coordinator processes of a run.
func coordinators(failover bool) []string {
	if failover {
		return []string{coordName, coordB}
	}
	return []string{coordName}
}

// services are the order example's services, in the order a client calls
// them.
var services = []string{"orders", "payment", "inventory"}

// ledger is the coordinator's own database: the decision holder of the
// orders that keep their decision there (half of them, see place).
const ledger = "ledger"

// databases are the database servers: one per service, and the ledger.
var databases = append(append([]string(nil), services...), ledger)

// mariaDB is the service whose database is MariaDB (through XA); the
// others' and the ledger are PostgreSQL. Every order is a PostgreSQL +
// MariaDB transaction.
const mariaDB = "inventory"

// dbName names the database server of service svc (or of the ledger).
func dbName(svc string) string { return "db-" + svc }

// dbOf is the service (or the ledger) whose database server dbName named.
func dbOf(target string) string { return strings.TrimPrefix(target, "db-") }

// linkName names the link from one process to another.
func linkName(from, to string) string { return from + "->" + to }

// clientName is the test's own client, as one end of a link.
const clientName = "client"

// links lists every link, in a fixed order. The coordinators of a
// failover run share their links to the services and to the ledger (what
// a service advertises is one address), and each has its own to etcd.
func links(failover bool) []string {
	out := []string{linkName(clientName, coordName)}
	for _, s := range services {
		out = append(out, linkName(clientName, s), linkName(s, coordName), linkName(coordName, s), linkName(s, dbName(s)))
	}
	out = append(out, linkName(coordName, dbName(ledger)))
	if failover {
		out = append(out, linkName(clientName, coordB))
		for _, s := range services {
			out = append(out, linkName(s, coordB))
		}
		out = append(out, linkName(coordName, etcdName), linkName(coordB, etcdName))
	}
	return out
}

// faultKind is a kind of fault. The zero value is invalid.
type faultKind int

const (
	killCoordinator faultKind = 1 + iota
	killService
	killDatabase
	cutLink
	delayLink
	blackholeLink
	// rollbackByHand runs ROLLBACK PREPARED on one of the coordinator's
	// prepared branches at a service's database, behind its back (a DBA, a
	// failover that lost it): a commit of it must be reported as a
	// heuristic hazard, never as committed.
	rollbackByHand
	// isolateCoordinator blackholes a coordinator's link to etcd for
	// longer than its lease: a primary must stop deciding, and the
	// standby take over (failover runs only).
	isolateCoordinator
)

// kinds lists the kinds of fault of a run.
func kinds(failover bool) []faultKind {
	out := []faultKind{killCoordinator, killService, killDatabase, cutLink, delayLink, blackholeLink, rollbackByHand}
	if failover {
		out = append(out, isolateCoordinator)
	}
	return out
}

func (k faultKind) String() string {
	switch k {
	case killCoordinator:
		return "kill coordinator"
	case killService:
		return "kill service"
	case killDatabase:
		return "kill database"
	case cutLink:
		return "link cut"
	case delayLink:
		return "latency"
	case blackholeLink:
		return "blackhole"
	case rollbackByHand:
		return "rollback by hand"
	case isolateCoordinator:
		return "coordinator cut off from etcd"
	}
	return fmt.Sprintf("faultKind(%d)", int(k))
}

// targets lists what a fault of kind k can hit.
func (k faultKind) targets(failover bool) []string {
	switch k {
	case killCoordinator:
		return coordinators(failover)
	case isolateCoordinator:
		var out []string
		for _, c := range coordinators(failover) {
			out = append(out, linkName(c, etcdName))
		}
		return out
	case killService:
		return services
	case killDatabase:
		out := make([]string, 0, len(databases))
		for _, s := range databases {
			out = append(out, dbName(s))
		}
		return out
	case cutLink, delayLink, blackholeLink:
		return links(failover)
	case rollbackByHand:
		out := make([]string, 0, len(services))
		for _, s := range services {
			out = append(out, dbName(s))
		}
		return out
	}
	panic(fmt.Sprintf("torture: no targets for %v", k))
}

// direction says which way bytes are dropped on a blackholed link: toward
// the server (requests), back to the caller (responses), or both.
type direction int

const (
	bothWays direction = 1 + iota
	requestsOnly
	responsesOnly
)

func (d direction) String() string {
	switch d {
	case bothWays:
		return "both ways"
	case requestsOnly:
		return "requests only"
	case responsesOnly:
		return "responses only"
	}
	return fmt.Sprintf("direction(%d)", int(d))
}

// fault is one planned fault: target is down, cut, delayed or blackholed
// from the start of slot start to the start of slot end.
type fault struct {
	kind       faultKind
	target     string
	start, end int
	// latency and jitter of a delayLink fault.
	latency, jitter time.Duration
	// dir of a blackholeLink fault.
	dir direction
	// arm is the crash point armed in the process restarted at the end of
	// a kill ("name:N", or empty).
	arm string
}

func (f fault) String() string {
	s := fmt.Sprintf("%v %s, slots %d-%d", f.kind, f.target, f.start, f.end)
	switch f.kind {
	case delayLink:
		s += fmt.Sprintf(", %v±%v", f.latency, f.jitter)
	case blackholeLink:
		s += ", " + f.dir.String()
	}
	if f.arm != "" {
		s += ", restart armed with " + failpoint.EnvVar + "=" + f.arm
	}
	return s
}

// Crash points a restarted process may be armed with, and the highest hit
// count to arm them at.
var (
	coordCrashPoints = []string{
		failpoint.CoordBeforeDecision, failpoint.CoordAfterDecision, failpoint.CoordBetweenCommits,
		failpoint.CoordBeforeEnd, failpoint.CoordAfterEnd, failpoint.WALBeforeSync, failpoint.WALAfterSync,
		failpoint.RecoveryBeforeResolve, failpoint.RecoveryAfterResolve,
		// The ledger's decision row: its COMMIT, fences and deletions.
		failpoint.PGHolderBeforeInsert, failpoint.PGHolderAfterInsert, failpoint.PGHolderCommitSent,
		failpoint.PGHolderAfterCommit, failpoint.PGBeforeFence, failpoint.PGAfterFence,
		failpoint.PGHolderBeforeForget, failpoint.PGHolderAfterForget,
		failpoint.PGBeforeForgetMarkers, failpoint.PGAfterForgetMarkers,
	}
	serviceCrashPoints = []string{
		failpoint.SDKAfterPrepare, failpoint.SDKAfterRegister, failpoint.SDKAfterReport, failpoint.PGBeforePrepare, failpoint.PGAfterPrepare,
		failpoint.PGBeforeCommit, failpoint.PGAfterCommit, failpoint.PGBeforeRollback, failpoint.PGAfterRollback,
	}
)

const maxCrashHit = 8

// planConfig shapes a schedule.
type planConfig struct {
	// slots is how many slots the faults run for; a fault still on at the
	// last slot ends there.
	slots int
	// calm is how many slots at the start have no fault.
	calm int
	// maxActive bounds the faults on at once.
	maxActive int
	// failover: two coordinators on etcd (coordB, isolateCoordinator).
	failover bool
}

// planStream selects the random stream of the schedule among the streams
// drawn from one seed.
const planStream = 0x7363686564756c65

// plan draws the fault schedule. It is a pure function of the seed and the
// configuration: the same seed gives the same faults in the same slots
// whatever the machine and its timing. It is also a prefix of any longer
// run with the same seed: a fault starting before slot n is the same (save
// its end, cut at the last slot) whatever the length of the run.
func plan(seed uint64, cfg planConfig) []fault {
	rng := rand.New(rand.NewPCG(seed, planStream))
	var out []fault
	free := map[string]int{} // target -> first slot it may be hit again
	var deck []faultKind
	for s := cfg.calm; s < cfg.slots; s++ {
		n := 0
		switch x := rng.Float64(); {
		case x < 0.15:
			n = 2
		case x < 0.6:
			n = 1
		}
		for range n {
			active := 0
			for _, f := range out {
				if f.start <= s && s < f.end {
					active++
				}
			}
			if active >= cfg.maxActive {
				break
			}
			// Kinds come from a shuffled deck, so that a short run meets
			// every kind.
			if len(deck) == 0 {
				deck = append(deck, kinds(cfg.failover)...)
				rng.Shuffle(len(deck), func(i, j int) { deck[i], deck[j] = deck[j], deck[i] })
			}
			kind := deck[0]
			deck = deck[1:]
			var candidates []string
			for _, t := range kind.targets(cfg.failover) {
				if free[t] <= s {
					candidates = append(candidates, t)
				}
			}
			if len(candidates) == 0 {
				deck = append(deck, kind) // try it again later
				continue
			}
			f := fault{kind: kind, target: candidates[rng.IntN(len(candidates))], start: s}
			var length int
			switch kind {
			case killCoordinator, killService:
				length = 1 + rng.IntN(3)
				if rng.IntN(2) == 0 {
					points := serviceCrashPoints
					if kind == killCoordinator {
						points = coordCrashPoints
					}
					f.arm = fmt.Sprintf("%s:%d", points[rng.IntN(len(points))], 1+rng.IntN(maxCrashHit))
				}
			case killDatabase:
				length = 1 + rng.IntN(3)
			case rollbackByHand:
				length = 1 // at once; nothing to end
			case isolateCoordinator:
				// 2-8s: past the 3s lease about as often as not.
				length = 2 + rng.IntN(7)
			case cutLink:
				length = 1 + rng.IntN(5)
			case delayLink:
				length = 2 + rng.IntN(5)
				f.latency = time.Duration(20+rng.IntN(181)) * time.Millisecond
				f.jitter = time.Duration(rng.Int64N(int64(f.latency)/2 + 1)).Round(time.Millisecond)
			case blackholeLink:
				// Up to past the coordinator's call timeout (5s).
				length = 1 + rng.IntN(7)
				f.dir = []direction{bothWays, bothWays, requestsOnly, responsesOnly}[rng.IntN(4)]
			}
			f.end = min(s+length, cfg.slots)
			// One quiet slot before the same target is hit again.
			free[f.target] = s + length + 1
			out = append(out, f)
		}
	}
	return out
}

func TestScheduleIsAFunctionOfTheSeedAndSlotsOnly(t *testing.T) {
	cfg := planConfig{slots: 120, calm: 2, maxActive: 3}
	a, b := plan(42, cfg), plan(42, cfg)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("two schedules from one seed differ")
	}
	if reflect.DeepEqual(a, plan(43, cfg)) {
		t.Fatal("seeds 42 and 43 gave the same schedule")
	}
	// A shorter run is a prefix of a longer one.
	short := cfg
	short.slots = 50
	var want []fault
	for _, f := range a {
		if f.start < short.slots {
			f.end = min(f.end, short.slots)
			want = append(want, f)
		}
	}
	if got := plan(42, short); !reflect.DeepEqual(got, want) {
		t.Fatalf("a 50-slot schedule is not the start of a 120-slot one:\n got %v\nwant %v", got, want)
	}
}

func TestScheduleKeepsItsBounds(t *testing.T) {
	for seed := range uint64(400) {
		failover := seed%2 == 1
		cfg := planConfig{slots: 25, calm: 2, maxActive: 3, failover: failover}
		if failover {
			cfg.slots = 40 // one more kind of fault to meet
		}
		faults := plan(seed, cfg)
		seen := map[faultKind]bool{}
		for i, f := range faults {
			seen[f.kind] = true
			if f.start < cfg.calm || f.end > cfg.slots || f.end <= f.start {
				t.Fatalf("seed %d: fault %v is outside slots %d..%d", seed, f, cfg.calm, cfg.slots)
			}
			active := 0
			for _, g := range faults {
				if g.start <= f.start && f.start < g.end {
					active++
				}
			}
			if active > cfg.maxActive {
				t.Fatalf("seed %d: %d faults on at slot %d", seed, active, f.start)
			}
			for _, g := range faults[:i] {
				if g.target == f.target && f.start <= g.end {
					t.Fatalf("seed %d: %v overlaps %v", seed, f, g)
				}
			}
		}
		if want := len(kinds(failover)); len(seen) != want {
			t.Errorf("seed %d: a %d-slot run has only %d of %d kinds of fault: %v", seed, cfg.slots, len(seen), want, faults)
		}
	}
}
