/*
 * txcoord with a decision holder: one transaction with two branches, the
 * holder H (a PostgreSQL branch that keeps the commit decision as a row of
 * its own database and commits in one phase) and a prepared branch B, with
 * coordinator crashes and recovery, holder sessions killed, fences that
 * fail, a participant crash, lost and duplicated messages, and in-doubt
 * queries from B. See model/README.md ("The decision holder").
 *
 * Build variants (pass to spin as -DNAME or -DNAME=value):
 *   BROKEN_NO_FENCE  settle a lost reply (and recovery, and queries) by
 *                    reading the row without ending H's session and
 *                    without inserting 'A': no row means abort (must fail
 *                    I1 and I3)
 *   ONLY_I1          check atomicity alone (no I2/I3 ghosts, no
 *                    participant-side assertions)
 *   APP_OUTCOME      the application asks what the transaction became
 *                    (client Outcome, Coordinator.ResolveTx), answered
 *                    through a fence as ResolveTx does, and I5 is checked
 *   APP_OUTCOME_READ with APP_OUTCOME: answered by reading the holders'
 *                    rows without a fence (no row means "aborted"): must
 *                    fail I5 (see README.md)
 *   MAXCRASH, MAXPCRASH, MAXLOSS, MAXDUP, QANY, PANY, MAXHKILL, MAXHFAIL
 *                    fault budgets (below)
 */

#ifndef MAXCRASH
#define MAXCRASH  2	/* coordinator crashes */
#endif
#ifndef MAXPCRASH
#define MAXPCRASH 1	/* crashes of B's participant */
#endif
#ifndef MAXLOSS
#define MAXLOSS   1	/* messages lost (B's channels and the commit request) */
#endif
#ifndef MAXDUP
#define MAXDUP    1	/* messages delivered twice (B's channels) */
#endif
#ifndef QANY
#define QANY      1	/* in-doubt queries at an arbitrary moment (more are
			   sent whenever the system is otherwise quiet) */
#endif
#ifndef PANY
#define PANY      1	/* periodic recovery passes at an arbitrary moment
			   (more run whenever the system is otherwise quiet) */
#endif
#ifndef MAXHKILL
#define MAXHKILL  1	/* H's session killed while its coordinator lives
			   (connection dropped, holder server killed) */
#endif
#ifndef MAXHFAIL
#define MAXHFAIL  1	/* fences that fail: the holder cannot be reached,
			   or the fence ran but its reply was lost */
#endif

/* Channel capacities: enough for every message the budgets allow in flight
 * (a send asserts there is room, so a capacity too small is an error). */
#define PCAP (3 + MAXCRASH + 2*MAXDUP + QANY)		/* to B */
#define CCAP (4 + MAXCRASH + 2*MAXDUP + QANY)		/* to the coordinator */

mtype = {
	PREPARE, COMMIT, ROLLBACK, ANS_COMMIT, ANS_ABORT,	/* to B */
	YES, NO, ACK, QUERY, NOTFOUND,				/* from B */
	HOK, HERR,						/* from H's session */
	DECIDE							/* to H's session */
};

/* Coordinator states (protocol.State with a holder). INIT..FENCING, in
 * the first run, are "deciding": an in-doubt query is not answered. */
#define INIT       0	/* Commit called; H's transaction is open, B works */
#define PREPARING  1	/* phase one: PREPARE sent to B, waiting for its vote */
#define HOLDING    2	/* INSERT 'C'; COMMIT sent on H's session (StateHolding) */
#define FENCING    3	/* H's reply lost: a fence settles it (StateFencing) */
#define COMMITTING 4	/* phase two: COMMIT sent to B, waiting for its ack */
#define COMMITTED  5	/* B acknowledged; the row is noted and forgotten */
#define ABORTING   6	/* decision ABORT (nothing written by this run) */
#define ABORTED    7	/* rollbacks sent */
#define UNKNOWN    8	/* the fence failed: the caller hears "unknown";
			   the transaction is no longer live */
#define RECOVERED  9	/* after a restart: the transaction is not live */
#define DOWN      10	/* crashed: volatile state lost, log kept */
#define HAZARD    11	/* COMMIT met B lost (with LOSE): reported; the row
			   stays, never noted or forgotten */

/* H's transaction at the holder's database. It begins (BEGIN and the
 * transaction's advisory lock, in one round trip) before B can be
 * prepared, so the model starts with it open. */
#define HOPEN       0	/* open, holding the advisory lock */
#define HCOMMITTED  1	/* committed, together with the row 'C' */
#define HROLLEDBACK 2	/* rolled back: locally, by a fence, or its session died */

/* The decision row at the holder (txcoord_decisions, key txid). */
#define RNONE 0
#define RC    1		/* commit: inserted by H's own COMMIT */
#define RA    2		/* abort: inserted by a fence */

/* B's state at its database. PREPARED, COMMITTED and ABORTED are durable;
 * WORKING is lost by a crash (the database rolls it back). */
#define WORKING    0
#define PREPARED   1
#define BCOMMITTED 2
#define BABORTED   3
#define BLOST      4	/* rolled back or lost behind the coordinator's back
			   (with LOSE): no proof that it committed is left */

#ifndef MAXLOSE
#define MAXLOSE 1	/* prepared branches lost behind the coordinator's back */
#endif

chan toB = [PCAP] of { mtype };
chan toC = [CCAP] of { mtype };
chan toH = [1] of { mtype };	/* H's session: the one commit request */

/* Durable: the holder's database. */
byte hs = HOPEN;	/* H's transaction */
byte row = RNONE;	/* the decision row */

/* Durable: B's state at its database. */
byte bst = WORKING;

/* Durable: the coordinator's log. The holder path writes nothing on the
 * commit path; a commit is noted (and flushed) only before its row is
 * deleted, so that the outcome is still known once the row is gone. */
bit noted;

/* Volatile: the coordinator's memory, lost by a crash. */
byte cst = INIT;
bit acked;		/* B acknowledged COMMIT */
bit hreqSent;		/* this run sent the commit request on H's session */

/* H's session lost its coordinator: the coordinator crashed with the
 * commit request sent, or gave up waiting for the reply and closed the
 * connection. The server ends such a session when it notices, unless it
 * executes the request first. */
bit horphan;

/* Fault budgets used so far. */
byte crashes, pcrashes, lost, dups, queries, passes, hkills, hfails, losses;

/* The result of a fence (or, broken, of the read): RC, RA, or RNONE when
 * the holder could not be reached or the reply was lost. Reset after use. */
byte fres;

/* Ghosts, for the invariants only. */
bit commitSent;		/* a COMMIT (or an answer "commit") was sent to B */
bit abortActed;		/* an abort decision was acted on: a rollback sent
			   to B, an answer "abort" given, or a prepared B
			   rolled back */
bit everC;		/* the row has been 'C' (it may be forgotten since) */
bit everA;		/* the row has been 'A' */
bit hazardSeen;		/* a COMMIT to B was answered NOTFOUND (sticky) */
#ifdef APP_OUTCOME
bit told;		/* the application asked for the outcome */
bit toldAborted;	/* and heard "aborted" */
#endif

#define live        (crashes == 0 && cst != UNKNOWN)
#define deciding    (live && (cst == INIT || cst == PREPARING || cst == HOLDING || cst == FENCING))
#define notLive     (cst == COMMITTED || cst == ABORTED || cst == UNKNOWN || cst == RECOVERED || cst == HAZARD)
#define hdecided    (hs != HOPEN)
#define bcommitted  (bst == BCOMMITTED)
#define baborted    (bst == BABORTED)
#define bgone       (bst == BLOST)
#define bdecided    (bcommitted || baborted || bgone)

/* I1 atomicity: never one branch committed and the other rolled back. */
#define I1 (!((hs == HCOMMITTED && baborted) || (hs == HROLLEDBACK && bcommitted)))
/* I2: no COMMIT to B (nor an answer "commit"), and B not committed,
 * unless the row is 'C'; H is committed exactly when its row is 'C'. */
#define I2 ((!commitSent || everC) && (!bcommitted || everC) && ((hs == HCOMMITTED) == everC))
/* I3: a commit row is never contradicted: no abort acted on (rollback of
 * B, answer "abort", prepared B rolled back) for a transaction whose row is
 * or was 'C', before or after it; and never both 'C' and 'A' rows. */
#define I3 (!(everC && abortActed) && !(everC && everA))
/* H: a lost B is never silent: the transaction is neither reported
 * committed nor noted (and its row forgotten) while B is gone. */
#define H (!(bgone && (cst == COMMITTED || noted)))
#ifdef APP_OUTCOME
/* I5: the caller never hears "aborted" for a transaction that commits. */
#define I5 (!(toldAborted && everC))
#else
#define I5 true
#endif

/* A participant-side check: a decision reaching B that contradicts it
 * (always also a violation of I1 or I3). Off with ONLY_I1. */
#ifdef ONLY_I1
#define check(c, what) skip
#else
#define check(c, what) if :: !(c) -> printf("violated: participant B: "); printf(what); printf("\n"); assert(c) :: else -> skip fi
#endif

/* A message to B: delivered once, lost, or delivered twice. */
inline send(msg) {
	assert(len(toB) + 2 <= PCAP);
	if
	:: toB!msg
	:: lost < MAXLOSS -> lost++
	:: dups < MAXDUP -> dups++; toB!msg; toB!msg
	fi
}

/* A message from B to the coordinator, likewise. */
inline reply(msg) {
	assert(len(toC) + 2 <= CCAP);
	if
	:: toC!msg
	:: lost < MAXLOSS -> lost++
	:: dups < MAXDUP -> dups++; toC!msg; toC!msg
	fi
}

inline commitB() {
	commitSent = 1;
	acked = 0;
	send(COMMIT)
}

#ifndef BROKEN_NO_FENCE
/* The fence (postgres Resource.Fence), one atomic step at the holder: on a
 * new connection, terminate the session holding the transaction's
 * advisory lock and wait for the lock, so that H's session has certainly
 * ended (its COMMIT happened, or never will: a request not yet executed
 * dies with it); insert 'A' ON CONFLICT DO NOTHING; commit; read the row.
 * It may fail: the holder cannot be reached (nothing happens), or the
 * fence ran and its reply was lost. */
inline fenceAtH() {
	/* (No "else" here: an option that starts with an if holding an else
	 * would make that else the enclosing if's own.) */
	if :: hs == HOPEN -> hs = HROLLEDBACK :: hs != HOPEN -> skip fi;
	if :: nempty(toH) -> toH?_ :: empty(toH) -> skip fi;
	if :: row == RNONE -> row = RA; everA = 1 :: row != RNONE -> skip fi
}

inline fence() {
	if
	:: hfails < MAXHFAIL -> hfails++; fres = RNONE			/* unreachable */
	:: hfails < MAXHFAIL -> hfails++; fenceAtH(); fres = RNONE	/* reply lost */
	:: fenceAtH(); fres = row
	fi
}
#else
/* Broken: read the row, without ending H's session and without inserting
 * 'A'; no row means abort. H's commit request may still be executed. */
inline fence() {
	if
	:: hfails < MAXHFAIL -> hfails++; fres = RNONE
	:: fres = row; if :: fres == RNONE -> fres = RA :: else -> skip fi
	fi
}
#endif

/* A recovery pass (recovery.Pass), at restart and periodically:
 * redriveHeld: a 'C' row is driven to the end (COMMIT to B, then phase two
 * as in the first run; the row is noted and forgotten once B acks);
 * scan: a prepared B is committed if the log notes the commit, else
 * settled by a fence at H ('C': commit, 'A': roll back, unreachable:
 * nothing); the scan may meet a 'C' row too (redriveHeld skipped it as
 * young, or its COMMIT to B failed);
 * forgetAborted: an 'A' row goes once no B is left prepared. */
inline pass() {
	if
	:: row == RC -> commitB(); cst = COMMITTING
	:: bst == PREPARED && noted -> commitSent = 1; send(COMMIT)
	:: bst == PREPARED && !noted ->
		fence();
		if
		:: fres == RC -> commitSent = 1; send(COMMIT)
		:: fres == RA -> abortActed = 1; send(ROLLBACK)
		:: fres == RNONE -> skip	/* decide nothing */
		fi
	:: row == RA && bst != PREPARED -> row = RNONE
	:: else -> skip
	fi;
	fres = RNONE
}

active proctype Coordinator() {
	mtype m;
end:
	do
	/* Phase one: PREPARE B (H stays open: it commits last). */
	:: atomic { cst == INIT -> send(PREPARE); cst = PREPARING }

	/* The prepare timeout may fire at any moment of phase one. */
	:: atomic { cst == PREPARING -> cst = ABORTING }

	/* H's reply is lost, the connection drops, or the wait times out, at
	 * any moment: the outcome is unknown; the session is discarded. */
	:: atomic { cst == HOLDING -> horphan = 1; cst = FENCING }

	/* Fence: 'C' -> phase two; 'A' -> abort; the holder cannot be
	 * reached -> the caller hears unknown, recovery fences later. (One
	 * failed fence stands for every retry failing.) */
	:: atomic { cst == FENCING -> fence();
		if
		:: fres == RC -> commitB(); cst = COMMITTING
		:: fres == RA -> cst = ABORTING
		:: fres == RNONE -> cst = UNKNOWN
		fi;
		fres = RNONE }

	/* Abort: nothing written; H rolled back locally (unless the commit
	 * request was sent: then H failed, or a fence settled it), B rolled
	 * back. */
	:: atomic { cst == ABORTING ->
		abortActed = 1;
		if :: hs == HOPEN && !hreqSent -> hs = HROLLEDBACK :: else -> skip fi;
		send(ROLLBACK); cst = ABORTED }

	/* Phase two retries: after a backoff (when nothing else happens),
	 * COMMIT again until B acknowledges. Never gives up. */
	:: atomic { timeout && cst == COMMITTING && !acked -> send(COMMIT) }

	/* Every branch finished a commit: note it in the log, flush, then
	 * delete the row (the forgetter, off the commit path). */
	:: atomic { cst == COMMITTED && row == RC -> noted = 1; row = RNONE }

	/* The periodic recovery pass, once the transaction is no longer live
	 * and is older than the in-doubt timeout: at any moment (a bounded
	 * number of times, so that its fence races a late commit request) and
	 * whenever nothing else happens. (A pass that finds nothing to do
	 * changes nothing: not modelled.) */
	:: atomic { notLive && (bst == PREPARED || row != RNONE) && passes < PANY -> passes++; pass() }
	:: atomic { timeout && notLive && (bst == PREPARED || row != RNONE) -> pass() }

	/* Crash: memory lost, log kept. Answers on their way to the dead
	 * process are lost with it. H's session dies with it, and PostgreSQL
	 * rolls H back, unless the commit request was sent: bytes sent before
	 * the crash may still be executed. */
	:: atomic { cst != DOWN && crashes < MAXCRASH ->
		crashes++; cst = DOWN; acked = 0; hreqSent = 0;
		if
		:: hs == HOPEN && empty(toH) -> hs = HROLLEDBACK
		:: hs == HOPEN && nempty(toH) -> horphan = 1
		:: hs != HOPEN -> skip
		fi;
		do
		:: nempty(toC) -> toC?_
		:: empty(toC) -> break
		od }

#ifdef APP_OUTCOME
	/* The application asks what the transaction became (after hearing
	 * "unknown", or later), once, at any moment: the run's state while
	 * it drives the transaction, else the log, else the holder. */
	:: atomic { !told && cst != DOWN && !deciding -> told = 1;
		if
		:: live && cst == COMMITTING -> skip
		:: live && cst == ABORTING -> toldAborted = 1
		:: else ->
			if
			:: noted -> skip
			:: else ->
#ifdef APP_OUTCOME_READ
				/* ResolveTx today: every holder's row is read,
				 * without a fence; no row -> presumed abort. */
				if :: row != RC -> toldAborted = 1 :: else -> skip fi
#else
				fence();
				if :: fres == RA -> toldAborted = 1 :: else -> skip fi
#endif
			fi
		fi;
		fres = RNONE }
#endif

	/* Restart: the recovery pass at start-up. */
	:: atomic { cst == DOWN -> pass(); if :: cst == DOWN -> cst = RECOVERED :: else -> skip fi }

	/* Messages. A down coordinator drops them, and an answer reaches only
	 * the state that waits for it. */
	:: atomic { toC?m ->
		if
		:: m == YES ->
			/* All voted yes: INSERT the row and COMMIT, in one
			 * message on H's session (the request may be lost). */
			if
			:: cst == PREPARING ->
				hreqSent = 1;
				if
				:: toH!DECIDE
				:: lost < MAXLOSS -> lost++
				fi;
				cst = HOLDING
			:: else -> skip
			fi
		:: m == NO ->
			if :: cst == PREPARING -> cst = ABORTING :: else -> skip fi
		:: m == HOK ->
			/* H committed with the row: the commit point. */
			if :: cst == HOLDING -> commitB(); cst = COMMITTING :: else -> skip fi
		:: m == HERR ->
			/* Nothing recorded, H rolled back: abort. */
			if :: cst == HOLDING -> cst = ABORTING :: else -> skip fi
		:: m == ACK ->
			if :: cst == COMMITTING -> acked = 1; cst = COMMITTED :: else -> skip fi
		:: m == NOTFOUND ->
			/* B not prepared and unproven: a hazard, reported; the
			 * row stays for recovery and the operator. */
			if :: cst == COMMITTING -> hazardSeen = 1; cst = HAZARD :: else -> skip fi
		:: m == QUERY ->
			/* Outcome of the in-doubt B: wait while deciding; from
			 * the state while the run drives it; otherwise from the
			 * log, else from a fence at H. */
			if
			:: cst == DOWN || deciding -> skip
			:: live && cst == COMMITTING -> commitSent = 1; send(ANS_COMMIT)
			:: live && cst == ABORTING -> abortActed = 1; send(ANS_ABORT)
			:: else ->
				if
				:: noted -> commitSent = 1; send(ANS_COMMIT)
				:: else ->
					fence();
					if
					:: fres == RC -> commitSent = 1; send(ANS_COMMIT)
					:: fres == RA -> abortActed = 1; send(ANS_ABORT)
					:: fres == RNONE -> skip	/* Wait */
					fi
				fi
			fi
		fi;
		m = 0; fres = RNONE }
	od
}

/* H's session and the holder's database. */
active proctype Holder() {
end:
	do
	/* The commit request: INSERT the row 'C' and COMMIT. Executed only by
	 * a session still open (a fenced or dead session never executes it).
	 * An error (a row already there: a fence won; or H's transaction had
	 * failed) rolls H back. The reply reaches a coordinator that still
	 * waits for it. */
	:: atomic { toH?DECIDE ->
		if
		:: hs == HOPEN ->
			if
			:: row == RNONE -> row = RC; everC = 1; hs = HCOMMITTED;
				if :: !horphan -> toC!HOK :: else -> skip fi
			:: row == RNONE -> hs = HROLLEDBACK;
				if :: !horphan -> toC!HERR :: else -> skip fi
			:: row != RNONE -> hs = HROLLEDBACK;
				if :: !horphan -> toC!HERR :: else -> skip fi
			fi
		:: else -> skip
		fi }

	/* H's session ends without committing: its coordinator is gone and
	 * the server notices before a request arrives, or the connection
	 * drops, or the holder's server is killed (the row is durable). */
	:: atomic { hs == HOPEN && (horphan || hkills < MAXHKILL) ->
		if :: !horphan -> hkills++ :: else -> skip fi;
		hs = HROLLEDBACK;
		if :: nempty(toH) -> toH?_ :: empty(toH) -> skip fi }
	od
}

/* B, a prepared branch at its own resource. */
active proctype Participant() {
	mtype m;
end:
	do
	:: atomic { toB?m ->
		if
		:: m == PREPARE ->
			if
			:: bst == WORKING ->
				if
				:: bst = PREPARED; reply(YES)
				:: bst = BABORTED; reply(NO)
				fi
			:: bst == BABORTED -> reply(NO)
			:: else -> skip		/* a second PREPARE does nothing */
			fi
		:: m == COMMIT ->
			/* A branch committed before is proven (its marker):
			 * ACK. One lost behind our back has no proof: NOTFOUND. */
			check(bst == PREPARED || bst == BCOMMITTED || bgone,
			      "COMMIT reached a branch not prepared (rolled back or never prepared)");
			if
			:: bst == PREPARED -> bst = BCOMMITTED; reply(ACK)
			:: bst == BCOMMITTED -> reply(ACK)
			:: else ->
#ifdef BROKEN_NOTFOUND_IS_COMMIT
				reply(ACK)	/* broken: an unknown gid taken for committed */
#else
				reply(NOTFOUND)
#endif
			fi
		:: m == ROLLBACK ->
			check(bst != BCOMMITTED, "ROLLBACK reached a committed branch");
			if
			:: bst == PREPARED -> abortActed = 1; bst = BABORTED
			:: bst == WORKING -> bst = BABORTED
			:: else -> skip
			fi
		:: m == ANS_COMMIT ->
			check(bst != BABORTED, "answer commit reached a rolled-back branch");
			if :: bst == PREPARED -> bst = BCOMMITTED :: else -> skip fi
		:: m == ANS_ABORT ->
			check(bst != BCOMMITTED, "answer abort reached a committed branch");
			if :: bst == PREPARED -> abortActed = 1; bst = BABORTED :: else -> skip fi
		fi;
		m = 0 }

	/* In doubt: ask the coordinator for the outcome, at any moment (a
	 * bounded number of times) and whenever nothing else happens. */
	:: atomic { bst == PREPARED && queries < QANY -> queries++; reply(QUERY) }
	:: atomic { timeout && bst == PREPARED -> reply(QUERY) }

#ifdef LOSE
	/* B rolled back or lost behind the coordinator's back, with no proof
	 * of commit left. */
	:: atomic { bst == PREPARED && losses < MAXLOSE -> losses++; bst = BLOST }
#endif

	/* Work never prepared is rolled back by the database once abandoned. */
	:: atomic { timeout && bst == WORKING -> bst = BABORTED }

	/* Crash and restart: unprepared work and messages in flight to it are
	 * lost; a prepared branch stays prepared. */
	:: atomic { (bst == WORKING || bst == PREPARED) && pcrashes < MAXPCRASH ->
		pcrashes++;
		if :: bst == WORKING -> bst = BABORTED :: else -> skip fi;
		do
		:: nempty(toB) -> toB?_
		:: empty(toB) -> break
		od }
	od
}

/* Checked in every reachable state: the monitor can fire in any one. */
active proctype Invariants() {
end:
#ifdef ONLY_I1
	atomic { !I1 -> printf("violated: I1 atomicity: one branch committed, the other rolled back\n"); assert(I1) }
#else
	atomic { !(I1 && I2 && I3 && I5 && H) ->
		if :: !I1 -> printf("violated: I1 atomicity: one branch committed, the other rolled back\n") :: else -> skip fi;
		if :: !I2 -> printf("violated: I2 COMMIT sent or applied, or H committed, without the commit row\n") :: else -> skip fi;
		if :: !I3 -> printf("violated: I3 commit row contradicted by an abort\n") :: else -> skip fi;
		if :: !I5 -> printf("violated: I5 the caller heard aborted for a transaction that committed\n") :: else -> skip fi;
		if :: !H -> printf("violated: H a lost branch reported committed or its row forgotten\n") :: else -> skip fi;
		assert(I1 && I2 && I3 && I5 && H) }
#endif
}

/* Termination: eventually both branches are decided for good (or B lost),
 * and the decision row is gone (a commit noted in the log first), or kept
 * for a reported hazard (only with LOSE). */
ltl terminates { <> [] (hdecided && bdecided && (row == RNONE || hazardSeen)) }
