#!/usr/bin/env bash
# Checks model/txcoord.pml exhaustively with spin (see model/README.md):
#   1. the protocol: assertions I1-I3 in every reachable state (safety run);
#   2. the protocol: termination, the LTL claim "terminates" (acceptance cycles);
#   3. the variant that sends COMMIT before the record is durable: must fail;
#   4. the same variant checked for I1 (atomicity) alone: must fail.
# Exits 0 only if 1 and 2 find no error and 3 and 4 each find one.
# Arguments are extra spin definitions, e.g. -DMAXCRASH=3.
# MODEL_KEEP=1 keeps the work directory (pan sources, logs, trails).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
pml=txcoord.pml
defs=("$@")
depth=20000

say() { printf 'model: %s\n' "$*"; }
die() { printf 'model: %s\n' "$*" >&2; exit 1; }

if ! command -v spin >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		say "spin not found: apt-get install -y spin"
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y -qq spin >/dev/null 2>&1 ||
			{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq spin >/dev/null 2>&1; } || true
	fi
	command -v spin >/dev/null 2>&1 ||
		die "the spin model checker is missing: install it (Debian/Ubuntu: apt-get install spin, as root; or https://spinroot.com)"
fi

cc=${CC:-}
if [ -z "$cc" ] || ! command -v "$cc" >/dev/null 2>&1; then
	cc=
	for c in gcc cc clang; do
		if command -v "$c" >/dev/null 2>&1; then cc=$c; break; fi
	done
fi
[ -n "$cc" ] || die "a C compiler is missing (spin's verifier is C): install gcc (Debian/Ubuntu: apt-get install gcc)"

work=$(mktemp -d "${TMPDIR:-/tmp}/txcoord-model.XXXXXX")
if [ "${MODEL_KEEP:-}" = 1 ]; then
	say "work directory kept: $work"
else
	trap 'rm -rf "$work"' EXIT
fi

# build NAME "SPIN DEFS" "CC FLAGS": generate and compile one verifier in
# its own directory.
build() {
	local name=$1 sdefs=$2 cflags=$3 d="$work/$1"
	mkdir -p "$d"
	cp "$here/$pml" "$d/"
	echo "$sdefs" >"$d/defs"
	# shellcheck disable=SC2086
	(cd "$d" && spin $sdefs "${defs[@]}" -a "$pml") >"$d/spin.log" 2>&1 ||
		{ cat "$d/spin.log" >&2; echo "spin -a failed" >"$d/failed"; return; }
	# shellcheck disable=SC2086
	(cd "$d" && "$cc" -O2 $cflags -o pan pan.c) >"$d/cc.log" 2>&1 ||
		{ cat "$d/cc.log" >&2; echo "compiling pan.c failed" >"$d/failed"; }
}

# verify NAME "PAN FLAGS": run a built verifier; sets states, reached,
# errors, secs, what.
verify() {
	local name=$1 pflags=$2 d="$work/$1" sdefs
	[ ! -f "$d/failed" ] || die "$name: $(cat "$d/failed")"
	sdefs=$(cat "$d/defs")
	# shellcheck disable=SC2086
	(cd "$d" && ./pan -m$depth $pflags) >"$d/pan.log" 2>&1 || true
	states=$(awk '/states, stored/ {print $1; exit}' "$d/pan.log")
	reached=$(sed -n 's/.*depth reached \([0-9]*\),.*/\1/p' "$d/pan.log" | head -1)
	errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$d/pan.log" | head -1)
	secs=$(sed -n 's/^pan: elapsed time \([^ ]*\) seconds.*/\1/p' "$d/pan.log" | head -1)
	[ -n "$states" ] && [ -n "$errors" ] || { cat "$d/pan.log" >&2; die "$name: cannot read pan's report"; }
	if grep -q 'max search depth too small' "$d/pan.log"; then
		die "$name: search depth $depth too small, the search was not exhaustive"
	fi
	what=
	if [ -f "$d/$pml.trail" ]; then
		local steps viol
		# shellcheck disable=SC2086
		(cd "$d" && spin $sdefs "${defs[@]}" -t "$pml") >"$d/trail.log" 2>&1 || true
		steps=$(sed -n 's/.*trail ends after \([0-9]*\) steps.*/\1/p' "$d/trail.log" | head -1)
		viol=$(sed -n 's/^[[:space:]]*violated: //p' "$d/trail.log" | head -1 | tr -s ' \t' '  ' | sed 's/ *$//')
		if [ -n "$viol" ]; then
			what="$viol (trail of ${steps:-?} steps)"
		elif grep -q 'acceptance cycle' "$d/pan.log"; then
			what="a run where some branch is never decided (trail of ${steps:-?} steps)"
		else
			what=$(grep -m1 -E 'assertion violated|invalid end state|error' "$d/pan.log" || echo "unexplained error")
		fi
	fi
}

line() { printf 'model: %-8s %-32s %9s states stored, depth %4s, errors %s, %ss%s\n' "$1" "$2" "$states" "$reached" "$errors" "$secs" "${3:+  $3}"; }

start=$(date +%s.%N)
say "$(spin -V | head -1); $pml${defs[*]:+ with ${defs[*]}}"
ok=1

# The four verifiers compile in parallel; they run one after the other.
build safety "" "-DSAFETY -DNOCLAIM" &
build termination "" "" &
build broken "-DBROKEN_SEND_BEFORE_LOG" "-DSAFETY -DNOCLAIM" &
build broken-i1 "-DBROKEN_SEND_BEFORE_LOG -DONLY_I1" "-DSAFETY -DNOCLAIM" &
wait

verify safety ""
if [ "$errors" = 0 ]; then line correct "I1-I3 assertions (safety)" ok
else line correct "I1-I3 assertions (safety)" "FAIL: $what"; ok=0; fi

verify termination "-a"
if [ "$errors" = 0 ]; then line correct "termination (LTL, no fairness)" ok
else line correct "termination (LTL, no fairness)" "FAIL: $what"; ok=0; fi

verify broken ""
if [ "$errors" != 0 ] && grep -q 'violated: ' "$work/broken/trail.log"; then
	line broken "COMMIT before log, I1-I3" "caught: $what"
else line broken "COMMIT before log, I1-I3" "NOT CAUGHT${what:+: $what}"; ok=0; fi

verify broken-i1 ""
if [ "$errors" != 0 ] && grep -q 'violated: I1' "$work/broken-i1/trail.log"; then
	line broken "COMMIT before log, I1 only" "caught: $what"
else line broken "COMMIT before log, I1 only" "NOT CAUGHT${what:+: $what}"; ok=0; fi

total=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
if [ "$ok" = 1 ]; then
	say "PASS: the protocol keeps I1-I3 and terminates; sending COMMIT before logging it is caught (${total}s)"
else
	say "FAIL (${total}s)"
	exit 1
fi
