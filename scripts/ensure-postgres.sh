#!/usr/bin/env bash
# Makes sure PostgreSQL server binaries (initdb, postgres) are available for
# the throwaway test servers. Looks where internal/pgtest looks:
# $TXCOORD_PG_BIN, then PATH, then /usr/lib/postgresql/*/bin. If none is
# found and we are root on a Debian-like system, installs the distribution's
# package; otherwise prints one line saying what to install and fails.
#   --soft: print the line but exit 0 (the demo then runs without PostgreSQL).
set -euo pipefail
soft=0
[ "${1:-}" = "--soft" ] && soft=1

have_pg() {
	if [ -n "${TXCOORD_PG_BIN:-}" ] && [ -x "$TXCOORD_PG_BIN/initdb" ] && [ -x "$TXCOORD_PG_BIN/postgres" ]; then return 0; fi
	if command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then return 0; fi
	for d in /usr/lib/postgresql/*/bin; do
		if [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then return 0; fi
	done
	return 1
}

have_pg && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "ensure-postgres: PostgreSQL server binaries not found; installing Debian's postgresql package" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends postgresql >&2 || true
	have_pg && exit 0
fi

msg="PostgreSQL server binaries (initdb, postgres) not found: install them (Debian/Ubuntu: apt-get install postgresql) or set TXCOORD_PG_BIN to their directory"
if [ "$soft" = 1 ]; then
	echo "note: $msg" >&2
	exit 0
fi
echo "error: $msg" >&2
exit 1
