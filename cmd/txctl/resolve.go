package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

func newResolveCmd() *cobra.Command {
	var commit, abort, acceptHazard bool
	var reason, operator string
	cmd := &cobra.Command{
		Use:   "resolve TXID (--commit | --abort) --reason TEXT",
		Short: "Drive a stuck transaction to an outcome",
		Long: `Drive a transaction to commit or abort now, and finish its prepared branches
so that their locks are released.

If the log holds a decision, only that decision may be driven: asking for the
other one is refused (exit code 3) and nothing changes. Without a logged
decision, the server finds the transaction's prepared branches at its
resources. When their gids name a decision holder, that holder's row decides:
the server first settles it (a transaction with no commit row gets an abort
row, so that a late commit cannot land), refuses an order that contradicts
the row (exit code 3; no branch is touched), and carries out one that agrees,
logging nothing heuristic. Otherwise (the transaction was never decided, or
its log was lost) it records your choice as a heuristic decision, with who,
when and why, before carrying it out. A live, undecided transaction can only
be aborted.

A committed transaction with a branch that is not prepared and that its
database cannot prove committed (state hazard: rolled back or lost behind the
coordinator's back) is never ended on its own. Check that branch's database
(restore or redo its change by hand if it is missing), then end it with
--commit --accept-hazard; who and why are logged.`,
		Example: `  txctl resolve 01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b --abort --reason "client gone; rows locked since 02:10"
  txctl resolve 01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b --commit --reason "log restored from backup shows COMMIT"
  txctl resolve 01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b --commit --accept-hazard --reason "ledger row re-entered by hand after the failover"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseTxIDArg(args[0])
			if err != nil {
				return err
			}
			if commit == abort {
				return usageErr(errors.New("say --commit or --abort (exactly one)"))
			}
			if reason == "" {
				return usageErr(errors.New("--reason is required: it is recorded with the decision"))
			}
			if acceptHazard && !commit {
				return usageErr(errors.New("--accept-hazard goes with --commit: a hazard is a branch of a committed transaction"))
			}
			dec := txcoordv1.Decision_DECISION_ABORT
			if commit {
				dec = txcoordv1.Decision_DECISION_COMMIT
			}
			api, closeConn, err := dial()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, cancel := callCtx(cmd)
			defer cancel()
			resp, err := api.Resolve(ctx, &txcoordv1.ResolveRequest{Txid: id, Decision: dec, Reason: reason, Operator: operator, AcceptHazard: acceptHazard})
			if err != nil {
				return rpcErr(err)
			}
			out := cmd.OutOrStdout()
			if g.output == "json" {
				if err := printJSON(out, resp); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(out, resp.GetAction())
				tw := table(out)
				for _, b := range resp.GetBranches() {
					fmt.Fprintf(tw, "  %s\t%s\t%s\n", b.GetParticipant(), b.GetGid(), b.GetResult())
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			kept := "the decision is logged"
			if h := resp.GetDecisionHolder(); h != "" {
				kept = "decision holder " + h + "'s row keeps the decision"
			}
			for _, b := range resp.GetBranches() {
				if !b.GetOk() && strings.Contains(b.GetResult(), "heuristic hazard") {
					return fail(exitRefused, fmt.Errorf("branch %s at %s is a heuristic hazard: %s", b.GetGid(), b.GetParticipant(), b.GetResult()),
						"check that branch's database, then run again with --accept-hazard")
				}
				if !b.GetOk() {
					return fail(exitUnavailable, fmt.Errorf("branch %s at %s not finished: %s", b.GetGid(), b.GetParticipant(), b.GetResult()),
						kept+"; run `txctl recover` once the database is reachable, or wait for the next recovery pass")
				}
			}
			return nil
		},
	}
	user := os.Getenv("USER")
	cmd.Flags().BoolVar(&commit, "commit", false, "commit the transaction")
	cmd.Flags().BoolVar(&abort, "abort", false, "roll the transaction back")
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded with a heuristic decision; required)")
	cmd.Flags().StringVar(&operator, "operator", user, "a note of who you are, recorded beside the identity the server authenticated (your certificate's or token's)")
	cmd.Flags().BoolVar(&acceptHazard, "accept-hazard", false, "with --commit: end the transaction although a branch cannot be proven committed (you checked it)")
	return cmd
}
