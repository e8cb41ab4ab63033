package failpoint

import "sort"

// Crash points. Each durable write has one on both sides.
const (
	// Coordinator, around the COMMIT decision and phase two.
	CoordBeforeDecision = "coord-before-decision"  // all voted yes, COMMIT not yet logged
	CoordAfterDecision  = "coord-after-decision"   // COMMIT fsynced, no branch told yet
	CoordBetweenCommits = "coord-between-commits"  // one branch committed, others not yet
	CoordBeforeEnd      = "coord-before-end"       // every branch acknowledged, END not yet written
	CoordAfterEnd       = "coord-after-end"        // END handed to the log
	CoordBeforeOnePhase = "coord-before-one-phase" // single branch, before its local commit
	CoordAfterOnePhase  = "coord-after-one-phase"  // single branch committed, caller not told

	// WAL, around each durable write of the log: a bbolt commit (fsync), an
	// etcd transaction (a Raft majority), and around compaction.
	WALBeforeSync    = "wal-before-sync"
	WALAfterSync     = "wal-after-sync"
	WALBeforeCompact = "wal-before-compact"
	WALAfterCompact  = "wal-after-compact"
	// WAL, around moving the journal's decisions into the bbolt file.
	WALBeforeMove = "wal-before-move"
	WALAfterMove  = "wal-after-move"

	// PostgreSQL participant.
	PGBeforePrepare  = "pg-before-prepare"
	PGAfterPrepare   = "pg-after-prepare"
	PGBeforeCommit   = "pg-before-commit-prepared"
	PGAfterCommit    = "pg-after-commit-prepared"
	PGBeforeRollback = "pg-before-rollback-prepared"
	PGAfterRollback  = "pg-after-rollback-prepared"

	// PostgreSQL decision holder: the holder branch's decision row and its
	// one-phase COMMIT (the commit point), fences and row deletion.
	PGHolderBeforeInsert = "pg-holder-before-insert" // others prepared, decision row not yet sent
	PGHolderAfterInsert  = "pg-holder-after-insert"  // row inserted, COMMIT not yet sent
	PGHolderCommitSent   = "pg-holder-commit-sent"   // INSERT and COMMIT sent, reply not read
	PGHolderAfterCommit  = "pg-holder-after-commit"  // committed, no other branch told yet
	PGBeforeFence        = "pg-before-fence-commit"  // abort rows inserted, fence not committed
	PGAfterFence         = "pg-after-fence-commit"   // fence committed
	PGHolderBeforeForget = "pg-holder-before-forget" // rows to delete chosen, DELETE not sent
	PGHolderAfterForget  = "pg-holder-after-forget"  // rows deleted

	// PostgreSQL markers (proof that a branch committed), deleted once
	// the transaction's end is durable in the log.
	PGBeforeForgetMarkers = "pg-before-forget-markers" // markers to delete chosen, DELETE not sent
	PGAfterForgetMarkers  = "pg-after-forget-markers"  // markers deleted

	// Embedded key-value participant.
	KVBeforePrepare = "kv-before-prepare"
	KVAfterPrepare  = "kv-after-prepare"
	KVBeforeCommit  = "kv-before-commit"
	KVAfterCommit   = "kv-after-commit"

	// MariaDB/MySQL participant, around the XA statements.
	MySQLBeforePrepare       = "mysql-before-xa-prepare"
	MySQLAfterPrepare        = "mysql-after-xa-prepare"
	MySQLBeforeCommit        = "mysql-before-xa-commit"
	MySQLAfterCommit         = "mysql-after-xa-commit"
	MySQLBeforeRollback      = "mysql-before-xa-rollback"
	MySQLAfterRollback       = "mysql-after-xa-rollback"
	MySQLBeforeForgetMarkers = "mysql-before-forget-markers" // markers to delete chosen, DELETE not sent
	MySQLAfterForgetMarkers  = "mysql-after-forget-markers"  // markers deleted

	// Participant SDK (a remote service), around registering a prepared
	// branch with the coordinator or reporting it in the reply.
	SDKAfterPrepare  = "sdk-after-prepare"  // branch prepared, not yet registered or reported
	SDKAfterRegister = "sdk-after-register" // registered, the caller not yet told
	SDKAfterReport   = "sdk-after-report"   // reported in the reply's trailer, the reply not yet sent

	// Recovery, around resolving one branch.
	RecoveryBeforeResolve = "recovery-before-resolve"
	RecoveryAfterResolve  = "recovery-after-resolve"
)

var all = []string{
	CoordBeforeDecision, CoordAfterDecision, CoordBetweenCommits, CoordBeforeEnd, CoordAfterEnd,
	CoordBeforeOnePhase, CoordAfterOnePhase,
	WALBeforeSync, WALAfterSync, WALBeforeCompact, WALAfterCompact, WALBeforeMove, WALAfterMove,
	PGBeforePrepare, PGAfterPrepare, PGBeforeCommit, PGAfterCommit, PGBeforeRollback, PGAfterRollback,
	PGHolderBeforeInsert, PGHolderAfterInsert, PGHolderCommitSent, PGHolderAfterCommit,
	PGBeforeFence, PGAfterFence, PGHolderBeforeForget, PGHolderAfterForget,
	PGBeforeForgetMarkers, PGAfterForgetMarkers,
	KVBeforePrepare, KVAfterPrepare, KVBeforeCommit, KVAfterCommit,
	MySQLBeforePrepare, MySQLAfterPrepare, MySQLBeforeCommit, MySQLAfterCommit, MySQLBeforeRollback, MySQLAfterRollback,
	MySQLBeforeForgetMarkers, MySQLAfterForgetMarkers,
	SDKAfterPrepare, SDKAfterRegister, SDKAfterReport,
	RecoveryBeforeResolve, RecoveryAfterResolve,
}

// Names lists every crash point, sorted.
func Names() []string {
	out := append([]string(nil), all...)
	sort.Strings(out)
	return out
}

func known(name string) bool {
	for _, n := range all {
		if n == name {
			return true
		}
	}
	return false
}
