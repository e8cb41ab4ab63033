#!/usr/bin/env bash
# Runs go test verbosely but prints only what matters: each test's result
# line, its log lines, package results and failures; then a count line.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
go test -v "$@" 2>&1 | tee "$log" | grep --line-buffered -vE '^=== (RUN|PAUSE|CONT|NAME)'
rc=${PIPESTATUS[0]}
passed=$(grep -cE '^\s*--- PASS' "$log")
failed=$(grep -cE '^\s*--- FAIL' "$log")
skipped=$(grep -cE '^\s*--- SKIP' "$log")
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$rc"
