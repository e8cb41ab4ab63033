// Package faulttest puts real faults between the coordinator and its
// databases: a toxiproxy proxy in front of each PostgreSQL server (latency,
// a connection cut in the middle of PREPARE or COMMIT PREPARED, a
// blackhole) and PostgreSQL servers killed -9 in each phase and
// restarted. Each test checks I1 (all or nothing), I4 (nothing left
// prepared after recovery) and I5 (the caller is told committed, aborted
// or outcome unknown, and the unknown ones end one way everywhere).
package faulttest
