package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/txcoord/txcoord/ids"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

func parseTxIDArg(s string) (string, error) {
	if _, err := ids.ParseTxID(s); err != nil {
		return "", usageErr(fmt.Errorf("%q is not a transaction id (a UUID such as 01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b): %v", s, err))
	}
	return s, nil
}

func newShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show TXID",
		Short: "Show everything known of one transaction",
		Long: `Show a transaction's state, where its decision lives (the coordinator's log, or
the decision holder whose database keeps it, and what that holder's row
says now), its branches and what each branch's database says of it now
(still prepared or not), and its records in the decision log.`,
		Example: `  txctl show 01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b
  txctl show 01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseTxIDArg(args[0])
			if err != nil {
				return err
			}
			api, closeConn, err := dial()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, cancel := callCtx(cmd)
			defer cancel()
			t, err := api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: id, Probe: true})
			if err != nil {
				return rpcErr(err)
			}
			out := cmd.OutOrStdout()
			if g.output == "json" {
				return printJSON(out, t)
			}
			fmt.Fprintf(out, "transaction  %s\nstate        %s\nlive         %v\nstarted      %s\nage          %s\nretries      %d\n", t.GetTxid(), stateName(t.GetState()), t.GetLive(), ts(t.GetStarted()), age(t.GetAge()), t.GetRetries())
			if t.GetHazard() != "" {
				fmt.Fprintf(out, "hazard       %s\n", clean(t.GetHazard()))
				fmt.Fprintf(out, "             check the branch's database, then: txctl resolve %s --commit --accept-hazard --reason ...\n", t.GetTxid())
			}
			if t.GetCause() != "" {
				fmt.Fprintf(out, "cause        %s\n", clean(t.GetCause()))
			}
			if h := t.GetDecisionHolder(); h != "" {
				fmt.Fprintf(out, "decision at  decision holder %s: %s\n", h, clean(heldWords(t.GetHeldDecision())))
			} else {
				fmt.Fprintln(out, "decision at  the coordinator's log")
			}
			if d := t.GetDecision(); d != nil {
				fmt.Fprintf(out, "decision     %s at %s, ended %v", d.GetDecision(), ts(d.GetTime()), d.GetEnded())
				if d.GetHeuristic() {
					fmt.Fprintf(out, ", heuristic by %s: %s", clean(d.GetWho()), clean(d.GetWhy()))
				}
				if d.GetHolder() != "" {
					fmt.Fprintf(out, ", noted from decision holder %s's row", d.GetHolder())
				}
				fmt.Fprintln(out)
			} else {
				fmt.Fprintln(out, "decision     none logged")
			}
			fmt.Fprintln(out, "\nbranches")
			tw := table(out)
			fmt.Fprintln(tw, "  PARTICIPANT\tGID\tSTATE\tAT ITS DATABASE\tPREPARED AT\tATTEMPTS\tLAST ERROR")
			for _, b := range t.GetBranches() {
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%d\t%s\n", clean(b.GetParticipant()), clean(b.GetGid()), b.GetState(), dash(b.GetAtResource()), ts(b.GetPreparedAt()), b.GetAttempts(), dash(b.GetLastError()))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintln(out, "\nlog records")
			if len(t.GetRecords()) == 0 {
				fmt.Fprintln(out, "  none")
				return nil
			}
			tw = table(out)
			fmt.Fprintln(tw, "  LSN\tKIND\tTIME\tEPOCH\tHEURISTIC\tHOLDER\tWHO\tWHY")
			for _, r := range t.GetRecords() {
				fmt.Fprintf(tw, "  %d\t%s\t%s\t%d\t%v\t%s\t%s\t%s\n", r.GetLsn(), r.GetKind(), ts(r.GetTime()), r.GetEpoch(), r.GetHeuristic(), dash(r.GetHolder()), dash(r.GetWho()), dash(r.GetWhy()))
			}
			return tw.Flush()
		},
	}
}
