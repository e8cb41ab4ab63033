GO       ?= go
PKGS     ?= ./...
FUZZTIME ?= 20s
BENCHTIME ?= 5s
BENCHROUNDS ?= 5

.PHONY: all build test demo bench fuzz vet check-fmt pg

all: build

build:
	$(GO) build $(PKGS)

## pg: make sure PostgreSQL server binaries are there for the test servers.
pg:
	@scripts/ensure-postgres.sh

## test: every test, with the race detector, against real PostgreSQL servers
## that the tests start themselves.
test: pg vet
	scripts/gotest.sh -race -count=1 -timeout 9m $(PKGS)

## demo: bank transfers across two PostgreSQL databases (or the embedded
## store when PostgreSQL cannot be had), then an invariant check.
demo:
	@scripts/ensure-postgres.sh --soft
	$(GO) run ./examples/transfer

## bench: WAL group commit against one fsync per decision, and 2PC transfers
## through txcoord against a plain PREPARE/COMMIT PREPARED loop and
## independent commits, all in one run.
bench: pg
	$(GO) test -run '^$$' -bench 'Decisions' -benchtime 2s ./wal/
	$(GO) run ./cmd/txbench transfer --duration $(BENCHTIME) --rounds $(BENCHROUNDS) --workers 1,8,32

## fuzz: each fuzz target for FUZZTIME.
fuzz:
	@for target in $$(grep -rhoE '^func Fuzz[A-Za-z0-9_]+' --include='*_test.go' . | sed 's/func //' | sort -u); do \
		pkg=$$(dirname $$(grep -rlE "^func $$target\(" --include='*_test.go' . | head -1)); \
		echo "fuzz $$target in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

vet: check-fmt
	$(GO) vet $(PKGS)

check-fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
