/*
 * txcoord: two-phase commit with presumed abort, one transaction with two
 * branches, with coordinator crashes and recovery, participant crashes,
 * lost and duplicated messages, and in-doubt participants asking for the
 * outcome. See model/README.md.
 *
 * Build variants (pass to spin as -DNAME or -DNAME=value):
 *   BROKEN_SEND_BEFORE_LOG  send COMMIT to the branches before the COMMIT
 *                           record is durable (must fail I2, and I1)
 *   ONLY_I1                 check atomicity alone (no I2/I3 ghosts, no
 *                           participant-side assertions)
 *   MAXCRASH, MAXPCRASH, MAXLOSS, MAXDUP, QANY   fault budgets (below)
 */

#ifndef MAXCRASH
#define MAXCRASH  2	/* coordinator crashes */
#endif
#ifndef MAXPCRASH
#define MAXPCRASH 1	/* participant crashes, over both participants */
#endif
#ifndef MAXLOSS
#define MAXLOSS   1	/* messages lost */
#endif
#ifndef MAXDUP
#define MAXDUP    1	/* messages delivered twice */
#endif
#ifndef QANY
#define QANY      1	/* in-doubt queries at an arbitrary moment (more are
			   sent whenever the system is otherwise quiet) */
#endif

#define N    2		/* branches */
/* Channel capacities: enough for every message the budgets allow in flight
 * (a send asserts there is room, so a capacity too small is an error). */
#define PCAP (3 + MAXCRASH + 2*MAXDUP + QANY)		/* to one participant */
#define CCAP (6 + 2*MAXCRASH + 2*MAXDUP + QANY)		/* to the coordinator */

mtype = {
	PREPARE, COMMIT, ROLLBACK, ANS_COMMIT, ANS_ABORT,	/* to a participant */
	YES, NO, ACK, QUERY, NOTFOUND				/* to the coordinator */
};

/* Coordinator states. INIT..LOGGED, in the first run, are "deciding": an
 * in-doubt query is not answered (the engine answers Wait). */
#define INIT       0	/* Commit called; nothing sent */
#define PREPARING  1	/* phase one: waiting for votes */
#define LOGGING    2	/* all voted yes: COMMIT record being forced */
#define LOGGED     3	/* between the two steps of the decision (see below) */
#define COMMITTING 4	/* phase two: COMMIT sent, waiting for acks */
#define COMMITTED  5	/* every branch acknowledged, END appended */
#define ABORTING   6	/* decision ABORT (in memory only: presumed abort) */
#define ABORTED    7	/* rollbacks sent */
#define RECOVERED  8	/* after a restart: the transaction is not live */
#define DOWN       9	/* crashed: volatile state lost, log kept */
#define HAZARD    10	/* phase two over, but a branch was not prepared and
			   nothing proves it committed: reported, never ended */

/* Branch states at a participant. PREPARED, COMMITTED and ABORTED are
 * durable; WORKING is lost by a crash (the database rolls it back). */
#define WORKING    0
#define PREPARED   1
#define BCOMMITTED 2
#define BABORTED   3
#define BLOST      4	/* rolled back or lost behind the coordinator's back
			   (with LOSE): no proof that it committed is left */

/* Branches a fault may lose (with LOSE): a ROLLBACK PREPARED by hand, a
 * failover to a standby that had not received the PREPARE, a restore. */
#ifndef MAXLOSE
#define MAXLOSE 1
#endif

#define NONE 0

chan toP[N] = [PCAP] of { mtype };
chan toC = [CCAP] of { mtype, byte };

/* Durable: the coordinator's log. */
bit logCommit;		/* COMMIT record durable */
bit logEnd;		/* END record written (not forced) */

/* Durable: each branch's state at its resource. */
byte pst[N];

/* Volatile: the coordinator's memory, lost by a crash. */
byte cst = INIT;
mtype vote[N];
bit acked[N];
bit hz[N];		/* commit answered "no such branch, no proof" */

/* Fault budgets used so far. */
byte crashes, pcrashes, lost, dups, queries, losses;

/* Ghosts, for the invariants only. */
bit commitSent;		/* a COMMIT (or an answer "commit") has been sent */
bit abortActed;		/* an abort decision was acted on: a rollback sent,
			   an answer "abort" given, or a prepared branch
			   rolled back */

#define live        (crashes == 0)
#define deciding    (live && (cst == INIT || cst == PREPARING || cst == LOGGING || cst == LOGGED))
#define committed(i) (pst[i] == BCOMMITTED)
#define aborted(i)   (pst[i] == BABORTED)
#define gone(i)      (pst[i] == BLOST)
#define decided(i)   (committed(i) || aborted(i) || gone(i))

/* I1 atomicity: never one branch committed and another rolled back. */
#define I1 (!((committed(0) && aborted(1)) || (aborted(0) && committed(1))))
/* I2: no commit is sent, and no branch commits, before COMMIT is durable. */
#define I2 ((!commitSent || logCommit) && (!(committed(0) || committed(1)) || logCommit))
/* I3: a logged COMMIT is never contradicted: no abort decision is acted on
 * (rollback sent, "abort" answered, prepared branch rolled back) for a
 * transaction whose COMMIT is logged, before or after the record. */
#define I3 (!(logCommit && abortActed))
/* H: a branch lost behind the coordinator's back is never silent: the
 * transaction is neither reported committed (every branch acknowledged)
 * nor ended while one of its branches is gone. */
#define H (!((gone(0) || gone(1)) && (cst == COMMITTED || logEnd)))

/* A participant-side check: a decision reaching a branch that contradicts
 * it (always also a violation of I1 or I3). Off with ONLY_I1. */
#ifdef ONLY_I1
#define check(c, what) skip
#else
#define check(c, what) if :: !(c) -> printf("violated: participant %d: ", i); printf(what); printf("\n"); assert(c) :: else -> skip fi
#endif

/* A message to participant i: delivered once, lost, or delivered twice. */
inline send(i, msg) {
	assert(len(toP[i]) + 2 <= PCAP);
	if
	:: toP[i]!msg
	:: lost < MAXLOSS -> lost++
	:: dups < MAXDUP -> dups++; toP[i]!msg; toP[i]!msg
	fi
}

/* A message from participant i to the coordinator, likewise. */
inline reply(msg, i) {
	assert(len(toC) + 2 <= CCAP);
	if
	:: toC!msg,i
	:: lost < MAXLOSS -> lost++
	:: dups < MAXDUP -> dups++; toC!msg,i; toC!msg,i
	fi
}

inline sendCommits() {
	commitSent = 1;
	acked[0] = 0; acked[1] = 0; hz[0] = 0; hz[1] = 0;
	send(0, COMMIT);
	send(1, COMMIT)
}

/* Recovery scan: ask every resource for its prepared branches (the scan of
 * pg_prepared_xacts), commit those whose transaction has a COMMIT record,
 * roll back the others (presumed abort). */
inline scan() {
	j = 0;
	do
	:: j < N ->
		if
		:: pst[j] == PREPARED && logCommit -> commitSent = 1; send(j, COMMIT)
		:: pst[j] == PREPARED && !logCommit -> abortActed = 1; send(j, ROLLBACK)
		:: else -> skip
		fi;
		j++
	:: else -> break
	od;
	j = 0
}

active proctype Coordinator() {
	mtype m;
	byte b, j;
end:
	do
	/* Phase one: PREPARE every branch. */
	:: atomic { cst == INIT -> send(0, PREPARE); send(1, PREPARE); cst = PREPARING }

	/* The prepare timeout may fire at any moment of phase one. */
	:: atomic { cst == PREPARING -> cst = ABORTING }

#ifndef BROKEN_SEND_BEFORE_LOG
	/* All voted yes: append COMMIT and fsync; only when the fsync
	 * returned is COMMIT sent. A crash before the first step loses the
	 * record; a crash between the two leaves it durable, nothing sent. */
	:: atomic { cst == LOGGING -> logCommit = 1; cst = LOGGED }
	:: atomic { cst == LOGGED -> sendCommits(); cst = COMMITTING }
#else
	/* Broken: COMMIT sent before the record is durable. */
	:: atomic { cst == LOGGING -> sendCommits(); cst = LOGGED }
	:: atomic { cst == LOGGED -> logCommit = 1; cst = COMMITTING }
#endif

	/* Abort: nothing logged; roll back every branch. */
	:: atomic { cst == ABORTING ->
		abortActed = 1; send(0, ROLLBACK); send(1, ROLLBACK); cst = ABORTED }

	/* Phase two retries: after a backoff (when nothing else happens),
	 * COMMIT again every branch that has not acknowledged. Never gives up. */
	:: atomic { timeout && cst == COMMITTING ->
		if :: !acked[0] && !hz[0] -> send(0, COMMIT) :: else -> skip fi;
		if :: !acked[1] && !hz[1] -> send(1, COMMIT) :: else -> skip fi }

	/* The periodic recovery pass, once the transaction is no longer driven
	 * by this run and its branches are older than the in-doubt timeout.
	 * (A pass that finds nothing prepared changes nothing: not modelled.) */
	:: atomic { timeout && (cst == ABORTED || cst == COMMITTED || cst == RECOVERED || cst == HAZARD) &&
		    (pst[0] == PREPARED || pst[1] == PREPARED) -> scan() }

	/* Crash: memory lost, log kept (END may not have reached disk).
	 * Answers on their way to the dead process are lost with it; requests
	 * it sent may still be executed. */
	:: atomic { cst != DOWN && crashes < MAXCRASH ->
		crashes++; cst = DOWN;
		vote[0] = NONE; vote[1] = NONE; acked[0] = 0; acked[1] = 0; hz[0] = 0; hz[1] = 0;
		if :: logEnd -> logEnd = 0 :: skip fi;
		do
		:: nempty(toC) -> toC?_,_
		:: empty(toC) -> break
		od }

	/* Restart: drive every COMMIT without END again; then scan. */
	:: atomic { cst == DOWN ->
		if
		:: logCommit && !logEnd -> sendCommits(); cst = COMMITTING
		:: else -> scan(); cst = RECOVERED
		fi }

	/* Messages. A down coordinator drops them (connection refused), and a
	 * vote reaches only the run that asked for it. */
	:: atomic { toC?m,b ->
		if
		:: m == YES ->
			if
			:: cst == PREPARING ->
				vote[b] = YES;
				if :: vote[0] == YES && vote[1] == YES -> cst = LOGGING :: else -> skip fi
			:: else -> skip
			fi
		:: m == NO ->
			if :: cst == PREPARING -> cst = ABORTING :: else -> skip fi
		:: m == ACK || m == NOTFOUND ->
			if
			:: cst == COMMITTING ->
				if :: m == ACK -> acked[b] = 1 :: else -> hz[b] = 1 fi;
				if
				:: acked[0] && acked[1] -> logEnd = 1; cst = COMMITTED
				:: (acked[0] || hz[0]) && (acked[1] || hz[1]) && (hz[0] || hz[1]) ->
					cst = HAZARD	/* reported; the COMMIT stays without END */
				:: else -> skip
				fi
			:: else -> skip
			fi
		:: m == QUERY ->
			/* Outcome of an in-doubt branch: wait while deciding,
			 * else from the log: COMMIT logged -> commit, none -> abort. */
			if
			:: cst == DOWN || deciding -> skip
			:: else ->
				if
				:: logCommit -> commitSent = 1; send(b, ANS_COMMIT)
				:: else -> abortActed = 1; send(b, ANS_ABORT)
				fi
			fi
		fi;
		m = 0; b = 0 }
	od
}

proctype Participant(byte i) {
	mtype m;
end:
	do
	:: atomic { toP[i]?m ->
		if
		:: m == PREPARE ->
			if
			:: pst[i] == WORKING ->
				if
				:: pst[i] = PREPARED; reply(YES, i)
				:: pst[i] = BABORTED; reply(NO, i)
				fi
			:: pst[i] == BABORTED -> reply(NO, i)
			:: else -> skip		/* a second PREPARE does nothing */
			fi
		:: m == COMMIT ->
			/* A branch committed before is proven (its marker):
			 * ACK. One lost behind our back has no proof: NOTFOUND. */
			check(pst[i] == PREPARED || pst[i] == BCOMMITTED || gone(i),
			      "COMMIT reached a branch not prepared (rolled back or never prepared)");
			if
			:: pst[i] == PREPARED -> pst[i] = BCOMMITTED; reply(ACK, i)
			:: pst[i] == BCOMMITTED -> reply(ACK, i)
			:: else ->
#ifdef BROKEN_NOTFOUND_IS_COMMIT
				reply(ACK, i)	/* broken: an unknown gid taken for committed */
#else
				reply(NOTFOUND, i)
#endif
			fi
		:: m == ROLLBACK ->
			check(pst[i] != BCOMMITTED, "ROLLBACK reached a committed branch");
			if
			:: pst[i] == PREPARED -> abortActed = 1; pst[i] = BABORTED
			:: pst[i] == WORKING -> pst[i] = BABORTED
			:: else -> skip
			fi
		:: m == ANS_COMMIT ->
			check(pst[i] != BABORTED, "answer commit reached a rolled-back branch");
			if :: pst[i] == PREPARED -> pst[i] = BCOMMITTED :: else -> skip fi
		:: m == ANS_ABORT ->
			check(pst[i] != BCOMMITTED, "answer abort reached a committed branch");
			if :: pst[i] == PREPARED -> abortActed = 1; pst[i] = BABORTED :: else -> skip fi
		fi;
		m = 0 }

	/* In doubt: ask the coordinator for the outcome, at any moment (a
	 * bounded number of times) and whenever nothing else happens. */
	:: atomic { pst[i] == PREPARED && queries < QANY -> queries++; reply(QUERY, i) }
	:: atomic { timeout && pst[i] == PREPARED -> reply(QUERY, i) }

#ifdef LOSE
	/* A prepared branch rolled back or lost behind the coordinator's
	 * back, with no proof of commit left. */
	:: atomic { pst[i] == PREPARED && losses < MAXLOSE -> losses++; pst[i] = BLOST }
#endif

	/* Work never prepared is rolled back by the database once abandoned. */
	:: atomic { timeout && pst[i] == WORKING -> pst[i] = BABORTED }

	/* Crash and restart: unprepared work and messages in flight to it are
	 * lost; a prepared branch stays prepared. */
	:: atomic { (pst[i] == WORKING || pst[i] == PREPARED) && pcrashes < MAXPCRASH ->
		pcrashes++;
		if :: pst[i] == WORKING -> pst[i] = BABORTED :: else -> skip fi;
		do
		:: nempty(toP[i]) -> toP[i]?_
		:: empty(toP[i]) -> break
		od }
	od
}

/* Checked in every reachable state: the monitor can fire in any one. */
active proctype Invariants() {
end:
#ifdef ONLY_I1
	atomic { !I1 -> printf("violated: I1 atomicity: one branch committed, another rolled back\n"); assert(I1) }
#else
	atomic { !(I1 && I2 && I3 && H) ->
		if :: !I1 -> printf("violated: I1 atomicity: one branch committed, another rolled back\n") :: else -> skip fi;
		if :: !I2 -> printf("violated: I2 COMMIT sent or applied before the COMMIT record is durable\n") :: else -> skip fi;
		if :: !I3 -> printf("violated: I3 logged COMMIT contradicted by an abort\n") :: else -> skip fi;
		if :: !H -> printf("violated: H a lost branch reported committed or ended\n") :: else -> skip fi;
		assert(I1 && I2 && I3 && H) }
#endif
}

init {
	atomic { run Participant(0); run Participant(1) }
}

/* Termination: eventually every branch is decided for good (or lost), and
 * a logged COMMIT has its END, or is a reported hazard. */
ltl terminates { <> [] (decided(0) && decided(1) && (!logCommit || logEnd || cst == HAZARD)) }
