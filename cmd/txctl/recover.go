package main

import (
	"fmt"

	"github.com/spf13/cobra"

	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

func newRecoverCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "recover",
		Short: "Run a recovery pass now and print what it did",
		Long: `Ask the server to run a recovery pass now: drive every logged decision
without END to its branches, then resolve prepared branches of this
coordinator that no live transaction owns (commit where COMMIT is logged or
a decision holder's row keeps it, roll back otherwise: presumed abort),
leaving young and foreign ones alone.`,
		Example: `  txctl recover
  txctl recover -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			api, closeConn, err := dial()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, cancel := callCtx(cmd)
			defer cancel()
			rep, err := api.Recover(ctx, &txcoordv1.RecoverRequest{})
			if err != nil {
				return rpcErr(err)
			}
			out := cmd.OutOrStdout()
			if g.output == "json" {
				return printJSON(out, rep)
			}
			fmt.Fprintf(out, "decisions driven to the end  %d\nbranches committed           %d\nbranches rolled back         %d\nleft alone: live %d, young %d, foreign %d\n",
				rep.GetRedriven(), rep.GetCommitted(), rep.GetRolledBack(), rep.GetSkippedLive(), rep.GetSkippedYoung(), rep.GetForeign())
			fmt.Fprintf(out, "decision holders: fenced %d, held commits driven %d, rows forgotten %d\n", rep.GetFenced(), rep.GetHeld(), rep.GetForgotten())
			for _, d := range rep.GetDown() {
				fmt.Fprintf(out, "resource down: %s (unreachable; its branches wait, and no branch is begun there until it is back)\n", clean(d))
			}
			hazard := map[string]bool{}
			for _, h := range rep.GetHazards() {
				hazard[h] = true
				fmt.Fprintf(out, "heuristic hazard: %s (a branch is not prepared and nothing proves it committed: txctl show %s)\n", h, h)
			}
			for _, u := range rep.GetUnfinished() {
				if !hazard[u] {
					fmt.Fprintf(out, "unfinished: %s (some branch did not acknowledge; retried next pass)\n", u)
				}
			}
			tw := table(out)
			for _, a := range rep.GetActions() {
				fmt.Fprintf(tw, "  %s\t%s\t%s\n", a.GetParticipant(), a.GetGid(), a.GetResult())
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, e := range rep.GetErrors() {
				fmt.Fprintf(out, "error: %s\n", e)
			}
			if len(rep.GetErrors()) > 0 {
				return fail(exitUnavailable, fmt.Errorf("the pass met %d errors", len(rep.GetErrors())), "a resource may be unreachable; the next pass retries")
			}
			return nil
		},
	}
}
