#!/usr/bin/env bash
# Makes sure MariaDB server programs (mariadbd, mariadb-install-db) are
# available for the throwaway test servers. Looks where
# internal/mariadbtest looks: $TXCOORD_MARIADB_BIN, then PATH, /usr/sbin and
# /usr/bin. If none is found and we are root on a Debian-like system,
# installs the distribution's package (without starting its service);
# otherwise prints one line saying what to install and fails.
#   --soft: print the line but exit 0.
set -euo pipefail
soft=0
[ "${1:-}" = "--soft" ] && soft=1

have_mariadb() {
	local d=${TXCOORD_MARIADB_BIN:-}
	if [ -n "$d" ]; then
		for s in "$d/mariadbd" "$d/mysqld" "$d/../sbin/mariadbd" "$d/../bin/mariadbd"; do
			for i in "$d/mariadb-install-db" "$d/mysql_install_db" "$d/../bin/mariadb-install-db" "$d/../scripts/mariadb-install-db"; do
				[ -x "$s" ] && [ -x "$i" ] && return 0
			done
		done
		return 1
	fi
	local s="" i=""
	s=$(command -v mariadbd || command -v mysqld || true)
	[ -z "$s" ] && [ -x /usr/sbin/mariadbd ] && s=/usr/sbin/mariadbd
	i=$(command -v mariadb-install-db || command -v mysql_install_db || true)
	[ -z "$i" ] && [ -x /usr/bin/mariadb-install-db ] && i=/usr/bin/mariadb-install-db
	[ -n "$s" ] && [ -n "$i" ]
}

have_mariadb && exit 0

if [ -z "${TXCOORD_MARIADB_BIN:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "ensure-mariadb: MariaDB server programs not found; installing Debian's mariadb-server package" >&2
	export DEBIAN_FRONTEND=noninteractive
	# A policy-rc.d that exits 101 keeps the package from starting a system
	# server; one already there is kept.
	made_policy=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
	fi
	apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends mariadb-server >&2 || true
	[ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
	have_mariadb && exit 0
fi

msg="MariaDB server programs (mariadbd, mariadb-install-db) not found: install them (Debian/Ubuntu: apt-get install mariadb-server) or set TXCOORD_MARIADB_BIN to their directory"
if [ "$soft" = 1 ]; then
	echo "note: $msg" >&2
	exit 0
fi
echo "error: $msg" >&2
exit 1
