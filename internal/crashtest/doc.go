// Package crashtest kills the coordinator at every named crash point while
// it runs concurrent transfers across two real PostgreSQL servers, restarts
// it on the same log, and checks that every transaction is all or nothing
// and nothing is left prepared. It has tests only.
package crashtest
