package main

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

var stateNames = map[string]txcoordv1.TxState{
	"active": txcoordv1.TxState_TX_STATE_ACTIVE, "preparing": txcoordv1.TxState_TX_STATE_PREPARING,
	"committing": txcoordv1.TxState_TX_STATE_COMMITTING, "committed": txcoordv1.TxState_TX_STATE_COMMITTED,
	"aborting": txcoordv1.TxState_TX_STATE_ABORTING, "aborted": txcoordv1.TxState_TX_STATE_ABORTED,
	"unknown": txcoordv1.TxState_TX_STATE_UNKNOWN, "in-doubt": txcoordv1.TxState_TX_STATE_IN_DOUBT,
	"heuristic": txcoordv1.TxState_TX_STATE_HEURISTIC, "hazard": txcoordv1.TxState_TX_STATE_HAZARD,
}

func stateList() string {
	var names []string
	for n := range stateNames {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func newListCmd() *cobra.Command {
	var olderThan time.Duration
	var states []string
	var noScan bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List live, unfinished and in-doubt transactions",
		Long: `List the transactions the server is driving, decided ones whose phase two is
unfinished, and (unless --no-scan) prepared branches found at the server's
resources that no live transaction owns (in doubt), with their age,
branches, where each decision lives (the coordinator's log, or the
decision holder whose database keeps it, with what its row says for
in-doubt ones), retry count and last error.`,
		Example: `  txctl list
  txctl list --state in-doubt --older-than 5m
  txctl list -o json | jq '.transactions[].txid'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &txcoordv1.ListTransactionsRequest{Scan: !noScan}
			if olderThan < 0 {
				return usageErr(fmt.Errorf("--older-than must not be negative"))
			}
			if olderThan > 0 {
				req.OlderThan = durationpb.New(olderThan)
			}
			for _, s := range states {
				st, ok := stateNames[s]
				if !ok {
					return usageErr(fmt.Errorf("--state %q: want one of %s", s, stateList()))
				}
				req.States = append(req.States, st)
			}
			api, closeConn, err := dial()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, cancel := callCtx(cmd)
			defer cancel()
			// Every page, oldest first.
			resp := &txcoordv1.ListTransactionsResponse{}
			for {
				pg, err := api.ListTransactions(ctx, req)
				if err != nil {
					return rpcErr(err)
				}
				resp.Transactions = append(resp.Transactions, pg.GetTransactions()...)
				if pg.GetNextPageToken() == "" {
					break
				}
				req.PageToken = pg.GetNextPageToken()
			}
			out := cmd.OutOrStdout()
			if g.output == "json" {
				return printJSON(out, resp)
			}
			if len(resp.GetTransactions()) == 0 {
				fmt.Fprintln(out, "no transactions")
				return nil
			}
			tw := table(out)
			fmt.Fprintln(tw, "TXID\tSTATE\tAGE\tDECISION AT\tBRANCHES\tRETRIES\tLAST ERROR")
			for _, t := range resp.GetTransactions() {
				var bs []string
				lastErr := t.GetCause()
				for _, b := range t.GetBranches() {
					bs = append(bs, b.GetParticipant()+":"+b.GetState())
					if b.GetLastError() != "" {
						lastErr = b.GetLastError()
					}
				}
				if held := t.GetHeldDecision(); lastErr == "" && strings.HasPrefix(held, "cannot ask") {
					lastErr = held
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", t.GetTxid(), stateName(t.GetState()), age(t.GetAge()), decisionAt(t), dash(strings.Join(bs, ",")), t.GetRetries(), dash(lastErr))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().DurationVar(&olderThan, "older-than", 0, "only transactions older than this")
	cmd.Flags().StringSliceVar(&states, "state", nil, "only these states: "+stateList())
	cmd.Flags().BoolVar(&noScan, "no-scan", false, "do not ask the resources for in-doubt branches")
	_ = cmd.RegisterFlagCompletionFunc("state", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		var names []string
		for n := range stateNames {
			names = append(names, n)
		}
		sort.Strings(names)
		return names, cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}
