// Package torture is a seeded chaos test of txcoord with real processes.
//
// It runs the txcoord server, the order example's three services (orders,
// payment, inventory) and one database server per service (PostgreSQL for
// orders and payment, MariaDB through XA for inventory, so that every order
// is a PostgreSQL + MariaDB transaction), each a separate process, with every link between them going through a toxiproxy proxy:
// client to coordinator, client to each service, each service to the
// coordinator, the coordinator to each service, and each service to its
// database. Concurrent clients place orders, each one global transaction
// across the three services, while a schedule drawn from a seed kills
// (SIGKILL) and restarts the coordinator, the services and the database
// servers, arms crash points in restarted processes, and cuts, delays and
// blackholes links. The schedule is a function of the seed and of time
// slots only, so a run can be replayed.
//
// At the end every fault is healed, every process restarted, and the test
// waits for recovery. Then every order must be in all three databases or in
// none, as its client was told (an order whose outcome was unknown may be
// either), money and stock must be conserved, nothing may be left in
// pg_prepared_xacts or XA RECOVER, and the coordinator's answer about each transaction
// must match the databases. It has tests only:
//
//	go test -race -run Torture -v ./internal/torture/   # short runs (25s of faults), without and with failover
//	make torture DURATION=10m SEED=123                   # long run
//
// The environment sets TORTURE_DURATION (how long faults are injected),
// TORTURE_SEED (replays a run; random by default, printed first),
// TORTURE_WORKERS (concurrent clients, default 4) and TORTURE_KEEP_LOGS=1
// (keep the logs of a run that passed; a failed run always keeps them:
// each process's output, the timeline of faults, and every order's fate).
//
// TORTURE_FAILOVER=1 (make torture FAILOVER=1) runs two coordinators for
// the one id, their log on a 3-member etcd cluster started in the test
// process, both started with --standby: the first is the primary, the
// other takes over when it dies. Kills then hit either coordinator, each
// has its own link to etcd, and a fault kind of its own blackholes that
// link for 2-8s, past the 3s lease about as often as not: a primary cut
// off must stop deciding, and its standby take over and finish what it
// left in doubt. Clients and services are given both addresses.
package torture
