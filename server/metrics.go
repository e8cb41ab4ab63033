package server

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/participant"
)

// Metrics are the coordinator's Prometheus metrics. Make them before the
// log and the coordinator, pass ObservePhase as coordinator.Config.Observe
// and ObserveSync as wal.BoltOptions.OnSync, then Attach the coordinator.
type Metrics struct {
	reg       *prometheus.Registry
	phase     *prometheus.HistogramVec
	syncBatch prometheus.Histogram
	syncTime  prometheus.Histogram
}

// NewMetrics makes the metrics in a registry of their own (with the Go
// runtime and process collectors).
func NewMetrics() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.phase = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "txcoord_phase_duration_seconds",
		Help:    "Duration of each transaction phase: prepare (first PREPARE to last vote), decision (COMMIT record durable), commit (phase two, retries included).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14),
	}, []string{"phase", "result"})
	m.syncBatch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "txcoord_wal_sync_records",
		Help:    "Records (decisions and END records) made durable by one WAL commit and its fsyncs: the group-commit batch size.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
	})
	m.syncTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "txcoord_wal_sync_duration_seconds",
		Help:    "Duration of one WAL commit, its fsyncs included.",
		Buckets: prometheus.ExponentialBuckets(0.00005, 2, 14),
	})
	m.reg.MustRegister(m.phase, m.syncBatch, m.syncTime,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObservePhase records a phase's duration (coordinator.Config.Observe).
func (m *Metrics) ObservePhase(p coordinator.Phase, d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.phase.WithLabelValues(string(p), result).Observe(d.Seconds())
}

// ObserveSync records one WAL commit (wal.BoltOptions.OnSync).
func (m *Metrics) ObserveSync(decisions, ends int, d time.Duration) {
	m.syncBatch.Observe(float64(decisions + ends))
	m.syncTime.Observe(d.Seconds())
}

// Attach adds the counters and gauges read from c (and s, if not nil) at
// each scrape.
func (m *Metrics) Attach(c *coordinator.Coordinator, s *Server) {
	m.reg.MustRegister(&statsCollector{c: c, s: s})
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry is where the metrics are registered.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

var (
	descTx      = prometheus.NewDesc("txcoord_transactions_total", "Transactions by outcome: committed, aborted, unknown (outcome unknown to the caller; recovery settles them).", []string{"outcome"}, nil)
	descBegun   = prometheus.NewDesc("txcoord_transactions_begun_total", "Transactions begun.", nil, nil)
	descOne     = prometheus.NewDesc("txcoord_one_phase_commits_total", "Single-branch transactions committed without a decision record.", nil, nil)
	descRetries = prometheus.NewDesc("txcoord_phase2_retries_total", "Phase-two commit attempts after the first.", nil, nil)
	descLive    = prometheus.NewDesc("txcoord_live_transactions", "Transactions this run is driving.", nil, nil)
	descInDoubt = prometheus.NewDesc("txcoord_in_doubt", "Decided transactions not yet finished by this run's live work, plus prepared branches the last recovery pass left in doubt.", nil, nil)
	descOldest  = prometheus.NewDesc("txcoord_in_doubt_oldest_seconds", "Age of the oldest in-doubt transaction or branch.", nil, nil)
	descSyncs   = prometheus.NewDesc("txcoord_wal_fsyncs_total", "WAL commits (each fsyncs the log).", nil, nil)
	descAppends = prometheus.NewDesc("txcoord_wal_decisions_total", "Decision records made durable.", nil, nil)
	descEnds    = prometheus.NewDesc("txcoord_wal_ends_total", "END records written.", nil, nil)
	descPending = prometheus.NewDesc("txcoord_wal_pending_decisions", "Decisions in the log without END.", nil, nil)
	descTracked = prometheus.NewDesc("txcoord_server_transactions", "Transactions the gRPC server remembers (open, and recently finished).", nil, nil)
	descHazards = prometheus.NewDesc("txcoord_heuristic_hazards_total", "Committed transactions found with a branch not prepared at its resource and not proven committed (rolled back or lost behind the coordinator's back), each counted once per run.", nil, nil)
	descOpenHaz = prometheus.NewDesc("txcoord_heuristic_hazards_open", "Heuristic hazards no operator has ended yet (txctl list --state hazard).", nil, nil)
	descUp      = prometheus.NewDesc("txcoord_resource_up", "1 for a resource that can guard the coordinator id and is claimed; 0 for one that is down (unreachable: no branch is begun there, and its branches wait).", []string{"resource"}, nil)
	descRefused = prometheus.NewDesc("txcoord_calls_refused_total", "Calls refused by the trust model, by kind (anonymous, role, not-owner, participant-name, unknown-token, token-over-plaintext, quota-..., ...).", []string{"kind"}, nil)
)

type statsCollector struct {
	c *coordinator.Coordinator
	s *Server
}

func (sc *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTx, descBegun, descOne, descRetries, descLive, descInDoubt, descOldest, descSyncs, descAppends, descEnds, descPending, descTracked, descHazards, descOpenHaz, descRefused, descUp} {
		ch <- d
	}
}

func (sc *statsCollector) Collect(ch chan<- prometheus.Metric) {
	st := sc.c.Stats()
	ch <- prometheus.MustNewConstMetric(descTx, prometheus.CounterValue, float64(st.Committed), "committed")
	ch <- prometheus.MustNewConstMetric(descTx, prometheus.CounterValue, float64(st.Aborted), "aborted")
	ch <- prometheus.MustNewConstMetric(descTx, prometheus.CounterValue, float64(st.Unknown), "unknown")
	ch <- prometheus.MustNewConstMetric(descBegun, prometheus.CounterValue, float64(st.Begun))
	ch <- prometheus.MustNewConstMetric(descOne, prometheus.CounterValue, float64(st.OnePhase))
	ch <- prometheus.MustNewConstMetric(descRetries, prometheus.CounterValue, float64(st.Retries))
	ch <- prometheus.MustNewConstMetric(descLive, prometheus.GaugeValue, float64(st.Live))
	n, oldest := sc.c.InDoubt()
	ch <- prometheus.MustNewConstMetric(descInDoubt, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, oldest.Seconds())
	ch <- prometheus.MustNewConstMetric(descSyncs, prometheus.CounterValue, float64(st.Log.Syncs))
	ch <- prometheus.MustNewConstMetric(descAppends, prometheus.CounterValue, float64(st.Log.Appends))
	ch <- prometheus.MustNewConstMetric(descEnds, prometheus.CounterValue, float64(st.Log.Ends))
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(st.Log.Pending))
	ch <- prometheus.MustNewConstMetric(descHazards, prometheus.CounterValue, float64(st.Hazards))
	ch <- prometheus.MustNewConstMetric(descOpenHaz, prometheus.GaugeValue, float64(st.OpenHazards))
	down := sc.c.DownResources()
	for _, r := range sc.c.Resources() {
		if _, guards := r.(participant.Guard); !guards {
			continue
		}
		up := 1.0
		if _, isDown := down[r.Name()]; isDown {
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, r.Name())
	}
	if sc.s != nil {
		ch <- prometheus.MustNewConstMetric(descTracked, prometheus.GaugeValue, float64(sc.s.Live()))
		for kind, n := range sc.s.cfg.Authorizer.Refusals() {
			ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(n), kind)
		}
	}
}
