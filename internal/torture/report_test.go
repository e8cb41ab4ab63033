package torture

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/txcoord/txcoord/client"
)

type summaryInput struct {
	records         []*record
	planned         map[faultKind]int
	setup, recovery time.Duration
	total           time.Duration
	violations      int
	after           []string
}

func (r *rig) summary(cfg config, in summaryInput) string {
	var b strings.Builder
	fmt.Fprintf(&b, "torture summary\n")
	fmt.Fprintf(&b, "  seed:          %d (replay: %s)\n", cfg.seed, cfg.replay())
	fmt.Fprintf(&b, "  run:           faults for %v (%d slots of %v), %d workers, race detector %v; set-up %v, recovery %v, total %v\n",
		cfg.duration, cfg.slots, slotLen, cfg.workers, raceEnabled, in.setup.Round(time.Second),
		in.recovery.Round(100*time.Millisecond), in.total.Round(time.Second))

	var told [4]int // by client.Outcome
	asMeant, begun := 0, 0
	var later [4]int
	for _, rec := range in.records {
		if strings.HasPrefix(rec.order.id, "after-") {
			continue
		}
		told[rec.told]++
		if rec.refusedAsMeant() {
			asMeant++
		}
		if !rec.txid.IsZero() {
			begun++
		}
		if rec.told == client.Unknown {
			later[rec.asked]++
		}
	}
	placed := told[client.Committed] + told[client.Aborted] + told[client.Unknown] + told[client.Hazard]
	fmt.Fprintf(&b, "  transactions:  %d placed (%d begun): committed %d, aborted %d (%d as meant: funds, stock or client abort), unknown %d, heuristic hazard %d\n",
		placed, begun, told[client.Committed], told[client.Aborted], asMeant, told[client.Unknown], told[client.Hazard])
	fmt.Fprintf(&b, "  unknown ones:  the coordinator says now: committed %d, aborted %d, heuristic hazard %d, still unknown %d\n",
		later[client.Committed], later[client.Aborted], later[client.Hazard], later[client.Unknown])
	lost := r.lostTxs()
	reported := 0
	for _, rec := range in.records {
		if lost[rec.txid] && rec.hazard(true) {
			reported++
		}
	}
	fmt.Fprintf(&b, "  rolled back by hand: %d transactions lost a prepared branch; %d reported as heuristic hazards (the checker allows a partial order only for those)\n",
		len(lost), reported)

	r.mu.Lock()
	injected := 0
	var byKind []string
	for _, k := range kinds(r.failover) {
		injected += r.injected[k]
		byKind = append(byKind, fmt.Sprintf("%v %d", k, r.injected[k]))
	}
	armed := r.armed
	r.mu.Unlock()
	planned := 0
	for _, n := range in.planned {
		planned += n
	}
	fmt.Fprintf(&b, "  faults:        %d injected of %d planned: %s\n", injected, planned, strings.Join(byKind, ", "))

	var fired []string
	nfired := 0
	var exits []string
	for _, name := range r.procNames() {
		crashes, ex := r.procs[name].counts()
		var specs []string
		for spec := range crashes {
			specs = append(specs, spec)
		}
		sort.Strings(specs)
		for _, spec := range specs {
			nfired += crashes[spec]
			what := fmt.Sprintf("%s at %s", name, spec)
			if crashes[spec] > 1 {
				what += fmt.Sprintf(" %d times", crashes[spec])
			}
			fired = append(fired, what)
		}
		if len(ex) > 0 {
			exits = append(exits, fmt.Sprintf("%s %d", name, len(ex)))
		}
	}
	fmt.Fprintf(&b, "  crash points:  %d armed at restarts, %d fired", armed, nfired)
	if len(fired) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(fired, ", "))
	}
	fmt.Fprintln(&b)
	if len(exits) > 0 {
		fmt.Fprintf(&b, "  exits:         processes that exited on their own and were restarted: %s\n", strings.Join(exits, ", "))
	}
	if r.failover {
		var became []string
		lost := 0
		for _, c := range r.coordinators() {
			log := r.procs[c].log()
			became = append(became, fmt.Sprintf("%s %d", c, strings.Count(log, `msg="primary of the coordinator id"`)))
			lost += strings.Count(log, `msg="lost the primary's lease on etcd`)
		}
		fmt.Fprintf(&b, "  failover:      became the primary: %s; primaries that lost their lease and stopped: %d\n", strings.Join(became, ", "), lost)
	}
	if len(in.after) == 0 {
		fmt.Fprintf(&b, "  after healing: %d orders committed\n", afterOrders)
	} else {
		fmt.Fprintf(&b, "  after healing: %d of %d orders could not commit\n", len(in.after), afterOrders)
	}
	fmt.Fprintf(&b, "  violations:    %d", in.violations)
	return b.String()
}

// writeRecords writes every order, its transaction, what its client was
// told and what the coordinator says now, to records.log.
func (r *rig) writeRecords(records []*record) {
	var b strings.Builder
	for _, rec := range records {
		fmt.Fprintf(&b, "%s\ttx %s\tmeant %v\ttold %v\tasked %v\t%v\n", rec.order.id, rec.txid, rec.meant, rec.told, rec.asked, rec.err)
	}
	if err := os.WriteFile(filepath.Join(r.logDir, "records.log"), []byte(b.String()), 0o644); err != nil {
		r.fail("write records: %v", err)
	}
}

// dump shows what a failed run needs to be understood.
func (r *rig) dump(t *testing.T) {
	t.Logf("--- timeline (%s):\n%s", r.ev.path, r.ev.tail(300))
	for _, name := range r.procNames() {
		t.Logf("--- last lines of %s's log:\n%s", name, r.procs[name].tail(40))
	}
	for _, s := range databases {
		t.Logf("--- last lines of %s's log:\n%s", dbName(s), r.pg[s].LogTail(20))
	}
}
