GO       ?= go
PKGS     ?= ./...
FUZZTIME ?= 20s
BENCHTIME ?= 5s
BENCHROUNDS ?= 3
REPORT   ?= report
SUSTAIN  ?= 3m

.PHONY: all build test crash failover demo bench fuzz vet check-fmt pg mariadb proto check-proto model torture

all: build

build:
	$(GO) build $(PKGS)

## pg: make sure PostgreSQL server binaries are there for the test servers.
pg:
	@scripts/ensure-postgres.sh

## mariadb: make sure MariaDB server programs are there for the test servers.
mariadb:
	@scripts/ensure-mariadb.sh

## test: every test, with the race detector, against real PostgreSQL and
## MariaDB servers that the tests start themselves; the crash test kills the coordinator
## CRASH_RUNS times at each crash point (make crash for a longer run).
CRASH_RUNS ?= 10
test: pg mariadb vet
	CRASHTEST_RUNS=$(CRASH_RUNS) scripts/gotest.sh -race -count=1 -timeout 9m $(PKGS)

## crash: only the crash test, CRASH_RUNS kills per crash point (default
## here 40).
crash: pg
	CRASHTEST_RUNS=$(if $(filter command line,$(origin CRASH_RUNS)),$(CRASH_RUNS),40) \
		$(GO) test -race -count=1 -timeout 60m -v -run 'TestKillAtEveryCrashPoint' ./internal/crashtest/

## demo: bank transfers across two PostgreSQL databases (or the embedded
## store when PostgreSQL cannot be had), then an invariant check.
demo:
	@scripts/ensure-postgres.sh --soft
	$(GO) run ./examples/transfer

## bench (SUSTAIN: how long txbench sustain loads the server, default 3m):
## WAL group commit against one fsync per decision; decisions/s on
## the etcd log (one member in process) beside bbolt; 2PC transfers
## through txcoord (bbolt log, and a decision holder; each with and without
## the markers that prove commits) against plain
## PREPARE/COMMIT PREPARED and decision-holder loops and independent
## commits; the same across PostgreSQL + MariaDB (XA) against a
## hand-written PREPARE TRANSACTION + XA loop; 10,000 transactions left in doubt by kill -9 and the time a
## restart takes to resolve them; then 2PC against our saga and no atomicity on four
## workloads (a short sweep, and a run with a database server killed), with
## two readers (plain and locking), time series and the report (JSON, PNG and
## SVG plots, summary.md) in $(REPORT)/.
bench: pg mariadb
	$(GO) test -run '^$$' -bench 'Decisions' -benchtime 2s ./wal/
	$(GO) test -run '^$$' -bench 'Append' -benchtime 2s ./wal/etcd/
	$(GO) test -run '^$$' -bench 'CommitTwoBranches' -benchtime 2s ./coordinator/
	$(GO) run ./cmd/txbench transfer --duration $(BENCHTIME) --rounds $(BENCHROUNDS) --workers 1,8,32
	$(GO) run ./cmd/txbench transfer --bank-b mariadb --duration $(BENCHTIME) --rounds $(BENCHROUNDS) --workers 8,32
	$(GO) run ./cmd/txbench recovery --transactions 10000
	$(GO) run ./cmd/txbench sustain --duration $(SUSTAIN)
	$(GO) run ./cmd/txbench logfill --ended 1000000
	$(GO) run ./cmd/txbench compare --report $(REPORT)/compare
	$(GO) run ./cmd/txbench compare --workloads transfer --workers 8 --duration 4s --crash --report $(REPORT)/crash

## failover: kill -9 a primary coordinator on etcd with 1,000 transactions
## in doubt and print how long its standby takes to finish them.
failover:
	$(GO) test -count=1 -run 'TestStandbyFinishesWhatTheKilledPrimaryLeftInDoubt' -v ./internal/failover/ | grep -E 'failover:|^(ok|FAIL|---)'

## fuzz: each fuzz target for FUZZTIME.
fuzz:
	@for target in $$(grep -rhoE '^func Fuzz[A-Za-z0-9_]+' --include='*_test.go' . | sed 's/func //' | sort -u); do \
		pkg=$$(dirname $$(grep -rlE "^func $$target\(" --include='*_test.go' . | head -1)); \
		echo "fuzz $$target in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

## proto: regenerate the Go code of every .proto file (no protoc needed:
## the files are compiled in-process; the plugins are the module's tools).
PROTO_ROOTS := $(wildcard proto examples/order/proto)
proto:
	$(GO) run ./internal/tools/protogen $(PROTO_ROOTS)

## check-proto: fail if committed generated code differs from its .proto.
check-proto:
	$(GO) run ./internal/tools/protogen -check $(PROTO_ROOTS)

vet: check-fmt
	$(GO) vet $(PKGS)

check-fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## model: the protocol with crashes, recovery, lost and duplicated messages
## and in-doubt queries, checked exhaustively by the spin model checker
## (I1-I3 and termination), with the log and with a decision holder; a
## variant sending COMMIT before it is durable, and one settling a lost
## holder commit without a fence, shown to fail (model/README.md).
## MODEL_DEFS adds spin -D flags.
model:
	@bash model/check.sh $(MODEL_DEFS)

## torture: a seeded chaos run of txcoord, the order example's services and
## their PostgreSQL servers as separate processes (internal/torture):
## concurrent orders while processes and database servers are killed and
## links between them cut, delayed and blackholed; then healing, recovery
## and the invariants. DURATION of faults (default 2m); SEED replays a run
## (default random, printed first). FAILOVER=1: two coordinators on an etcd
## cluster, a primary and a standby, with kills and etcd partitions of
## either in the fault mix.
DURATION ?= 2m
SEED     ?=
FAILOVER ?=
torture: pg mariadb
	@secs=$$(echo '$(DURATION)' | awk '{ s = 0; d = $$0; while (match(d, /^[0-9]+[hms]/)) { u = substr(d, RLENGTH, 1); s += substr(d, 1, RLENGTH - 1) * (u == "h" ? 3600 : u == "m" ? 60 : 1); d = substr(d, RLENGTH + 1) } if (d != "" || s == 0) exit 1; print s }') || \
		{ echo "DURATION=$(DURATION): want a duration such as 90s, 10m or 1h30m" >&2; exit 2; }; \
	TORTURE_DURATION='$(DURATION)' TORTURE_SEED='$(SEED)' TORTURE_FAILOVER='$(FAILOVER)' \
		$(GO) test -count=1 -run '^TestTorture$$' -v -timeout $$((secs + 1800))s ./internal/torture/
