#!/usr/bin/env bash
# Checks model/txcoord.pml and model/holder.pml exhaustively with spin (see
# model/README.md):
#   1. the protocol: assertions I1-I3 in every reachable state (safety run);
#   2. the protocol: termination, the LTL claim "terminates" (acceptance cycles);
#   3. the variant that sends COMMIT before the record is durable: must fail;
#   4. the same variant checked for I1 (atomicity) alone: must fail;
#   5. the protocol with a decision holder (holder.pml): I1-I3 (safety run);
#   6. the same: termination;
#   7. its variant that settles a lost holder commit by reading the row,
#      without a fence: must fail;
#   8. the same variant checked for I1 alone: must fail;
#   9. the holder with the application asking the outcome by transaction
#      id, answered through a fence: I1-I3 and I5;
#  10. the same, answered by reading the rows without a fence: must fail I5.
#  11. the protocol with a prepared branch lost behind the coordinator's
#      back (LOSE): I1-I3 and H (the loss is reported as a hazard, never
#      as committed, and the decision never ended);
#  12. the same: termination (a hazard is an end);
#  13. its variant that takes "no such branch" on COMMIT for committed:
#      must fail H;
#  14-16. the same three with a decision holder (holder.pml -DLOSE).
# Exits 0 only if 1, 2, 5, 6, 9, 11, 12, 14 and 15 find no error and 3, 4,
# 7, 8, 10, 13 and 16 each find one.
# Arguments are extra spin definitions, e.g. -DMAXCRASH=3.
# MODEL_KEEP=1 keeps the work directory (pan sources, logs, trails).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
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

# build NAME MODEL "SPIN DEFS" "CC FLAGS": generate and compile one verifier
# of MODEL (a .pml file here) in its own directory.
build() {
	local name=$1 pml=$2 sdefs=$3 cflags=$4 d="$work/$1"
	mkdir -p "$d"
	cp "$here/$pml" "$d/"
	echo "$pml" >"$d/pml"
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
	local name=$1 pflags=$2 d="$work/$1" sdefs pml
	[ ! -f "$d/failed" ] || die "$name: $(cat "$d/failed")"
	sdefs=$(cat "$d/defs")
	pml=$(cat "$d/pml")
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
say "$(spin -V | head -1); txcoord.pml, holder.pml${defs[*]:+ with ${defs[*]}}"
ok=1

# The verifiers compile in parallel; they run one after the other.
build safety txcoord.pml "" "-DSAFETY -DNOCLAIM" &
build termination txcoord.pml "" "" &
build broken txcoord.pml "-DBROKEN_SEND_BEFORE_LOG" "-DSAFETY -DNOCLAIM" &
build broken-i1 txcoord.pml "-DBROKEN_SEND_BEFORE_LOG -DONLY_I1" "-DSAFETY -DNOCLAIM" &
build holder-safety holder.pml "" "-DSAFETY -DNOCLAIM" &
build holder-termination holder.pml "" "" &
build holder-broken holder.pml "-DBROKEN_NO_FENCE" "-DSAFETY -DNOCLAIM" &
build holder-broken-i1 holder.pml "-DBROKEN_NO_FENCE -DONLY_I1" "-DSAFETY -DNOCLAIM" &
build holder-outcome holder.pml "-DAPP_OUTCOME" "-DSAFETY -DNOCLAIM" &
build holder-outcome-read holder.pml "-DAPP_OUTCOME -DAPP_OUTCOME_READ" "-DSAFETY -DNOCLAIM" &
build lose-safety txcoord.pml "-DLOSE" "-DSAFETY -DNOCLAIM" &
build lose-termination txcoord.pml "-DLOSE" "" &
build lose-broken txcoord.pml "-DLOSE -DBROKEN_NOTFOUND_IS_COMMIT" "-DSAFETY -DNOCLAIM" &
build holder-lose-safety holder.pml "-DLOSE" "-DSAFETY -DNOCLAIM" &
build holder-lose-termination holder.pml "-DLOSE" "" &
build holder-lose-broken holder.pml "-DLOSE -DBROKEN_NOTFOUND_IS_COMMIT" "-DSAFETY -DNOCLAIM" &
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

verify holder-safety ""
if [ "$errors" = 0 ]; then line correct "holder: I1-I3 assertions" ok
else line correct "holder: I1-I3 assertions" "FAIL: $what"; ok=0; fi

verify holder-termination "-a"
if [ "$errors" = 0 ]; then line correct "holder: termination (LTL)" ok
else line correct "holder: termination (LTL)" "FAIL: $what"; ok=0; fi

verify holder-broken ""
if [ "$errors" != 0 ] && grep -q 'violated: ' "$work/holder-broken/trail.log"; then
	line broken "holder: no fence, I1-I3" "caught: $what"
else line broken "holder: no fence, I1-I3" "NOT CAUGHT${what:+: $what}"; ok=0; fi

verify holder-broken-i1 ""
if [ "$errors" != 0 ] && grep -q 'violated: I1' "$work/holder-broken-i1/trail.log"; then
	line broken "holder: no fence, I1 only" "caught: $what"
else line broken "holder: no fence, I1 only" "NOT CAUGHT${what:+: $what}"; ok=0; fi

verify holder-outcome ""
if [ "$errors" = 0 ]; then line correct "holder: outcome by id, I1-I3, I5" ok
else line correct "holder: outcome by id, I1-I3, I5" "FAIL: $what"; ok=0; fi

verify holder-outcome-read ""
if [ "$errors" != 0 ] && grep -q 'violated: I5' "$work/holder-outcome-read/trail.log"; then
	line broken "holder: outcome read, no fence" "caught: $what"
else line broken "holder: outcome read, no fence" "NOT CAUGHT${what:+: $what}"; ok=0; fi

verify lose-safety ""
if [ "$errors" = 0 ]; then line correct "lost branch: I1-I3, H" ok
else line correct "lost branch: I1-I3, H" "FAIL: $what"; ok=0; fi

verify lose-termination "-a"
if [ "$errors" = 0 ]; then line correct "lost branch: termination (LTL)" ok
else line correct "lost branch: termination (LTL)" "FAIL: $what"; ok=0; fi

verify lose-broken ""
if [ "$errors" != 0 ] && grep -q 'violated: H' "$work/lose-broken/trail.log"; then
	line broken "lost branch taken for committed" "caught: $what"
else line broken "lost branch taken for committed" "NOT CAUGHT${what:+: $what}"; ok=0; fi

verify holder-lose-safety ""
if [ "$errors" = 0 ]; then line correct "holder: lost branch, I1-I3, H" ok
else line correct "holder: lost branch, I1-I3, H" "FAIL: $what"; ok=0; fi

verify holder-lose-termination "-a"
if [ "$errors" = 0 ]; then line correct "holder: lost branch, termination" ok
else line correct "holder: lost branch, termination" "FAIL: $what"; ok=0; fi

verify holder-lose-broken ""
if [ "$errors" != 0 ] && grep -q 'violated: H' "$work/holder-lose-broken/trail.log"; then
	line broken "holder: lost branch committed" "caught: $what"
else line broken "holder: lost branch committed" "NOT CAUGHT${what:+: $what}"; ok=0; fi

total=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
if [ "$ok" = 1 ]; then
	say "PASS: both protocols keep I1-I3 and terminate, and a branch lost behind the coordinator's back is a reported hazard; COMMIT sent before the log, a lost holder commit settled without a fence, and a lost branch taken for committed are caught (${total}s)"
else
	say "FAIL (${total}s)"
	exit 1
fi
