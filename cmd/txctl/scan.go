package main

import (
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	_ "github.com/lib/pq"
	"github.com/spf13/cobra"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/dsn"
	"github.com/txcoord/txcoord/participant/mysql"
)

// preparedRow is one prepared transaction found by scan.
type preparedRow struct {
	GID         string    `json:"gid"`
	Kind        string    `json:"kind"` // txcoord or foreign
	Coordinator string    `json:"coordinator,omitempty"`
	TxID        string    `json:"txid,omitempty"`
	Branch      string    `json:"branch,omitempty"`
	Holder      string    `json:"holder,omitempty"` // the decision holder the gid names
	Prepared    time.Time `json:"prepared"`         // on MariaDB/MySQL, when its transaction began; zero when unknown
	AgeSeconds  float64   `json:"age_seconds"`
	Stale       bool      `json:"stale"`
	Owner       string    `json:"owner"`
	Database    string    `json:"database"`
	XID         string    `json:"xid"`
	Locks       int       `json:"locks"`
	Relations   []string  `json:"relations"`
	Server      string    `json:"server"` // postgres or mysql
}

// scanQuery lists prepared transactions with the locks each holds. A
// prepared transaction's locks stay in pg_locks with no pid, under the
// virtual transaction that held its transaction id lock.
const scanQuery = `
WITH prep AS (
  SELECT p.*, (SELECT l.virtualtransaction FROM pg_locks l
               WHERE l.locktype = 'transactionid' AND l.transactionid = p.transaction AND l.pid IS NULL LIMIT 1) AS vt
  FROM pg_prepared_xacts p)
SELECT p.gid, p.prepared, p.owner, p.database, p.transaction::text,
       (SELECT count(*) FROM pg_locks l WHERE l.virtualtransaction = p.vt AND l.pid IS NULL),
       coalesce((SELECT array_agg(DISTINCT coalesce(c.relname, l.relation::text))
                 FROM pg_locks l
                 LEFT JOIN pg_class c ON c.oid = l.relation AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 WHERE l.virtualtransaction = p.vt AND l.pid IS NULL AND l.relation IS NOT NULL), '{}')
FROM prep p
ORDER BY p.prepared`

func newScanCmd() *cobra.Command {
	var connStr string
	var stale time.Duration
	cmd := &cobra.Command{
		Use:   "scan --dsn DSN",
		Short: "List every prepared transaction in a PostgreSQL or MariaDB/MySQL server, with what it holds",
		Long: `Connect to the database server directly (no txcoord server needed) and list
every prepared transaction: txcoord's (with coordinator, transaction and branch
parsed from the gid, and the decision holder whose database keeps the
decision when the gid names one) and foreign ones.
On PostgreSQL, with its age, owner, database, and the locks it holds
(relation names resolve for the database you connect to).
On MariaDB or MySQL (a mysql:// DSN), from XA RECOVER, which lists the whole
server's: with its xid as XA COMMIT and XA ROLLBACK take it, and for
txcoord's the age of its transaction (the server keeps no preparation time,
so a foreign xid's age is unknown).
A prepared transaction older than --stale is marked stale: it holds its locks
until someone commits or rolls it back (txctl resolve, for txcoord's).`,
		Example: `  txctl scan --dsn 'postgres://postgres@db1:5432/ledger?sslmode=disable'
  txctl scan --dsn 'host=db1 user=postgres dbname=ledger' --stale 30s -o json
  txctl scan --dsn 'mysql://root@db2:3306/shop'
  txctl scan --dsn @/etc/txcoord/ledger.dsn      # the DSN from a file, off the command line`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if connStr == "" {
				return usageErr(errors.New("--dsn is required"))
			}
			connStr, err := dsn.Resolve(connStr)
			if err != nil {
				return usageErr(err)
			}
			if isMySQL(connStr) {
				return scanMySQL(cmd, connStr, stale)
			}
			db, err := sql.Open("postgres", connStr)
			if err != nil {
				return usageErr(dsn.Scrub(err, connStr))
			}
			defer db.Close()
			ctx, cancel := callCtx(cmd)
			defer cancel()
			rows, err := db.QueryContext(ctx, scanQuery)
			if err != nil {
				return fail(exitUnavailable, fmt.Errorf("scan: %w", dsn.Scrub(err, connStr)), "check --dsn; the role needs to read pg_prepared_xacts and pg_locks")
			}
			defer rows.Close()
			var out []preparedRow
			now := time.Now()
			for rows.Next() {
				var r preparedRow
				var rels []byte
				if err := rows.Scan(&r.GID, &r.Prepared, &r.Owner, &r.Database, &r.XID, &r.Locks, &rels); err != nil {
					return fail(exitError, err, "")
				}
				r.Relations = parseArray(string(rels))
				r.Server = "postgres"
				r.AgeSeconds = now.Sub(r.Prepared).Seconds()
				r.Stale = now.Sub(r.Prepared) > stale
				r.Kind = "foreign"
				if g, err := ids.ParseGID(r.GID); err == nil {
					r.Kind, r.Coordinator, r.TxID, r.Branch = "txcoord", g.Prefix+"."+g.Coordinator, g.TxID.String(), g.Branch
					r.Holder, _ = g.Holder()
				}
				out = append(out, r)
			}
			if err := rows.Err(); err != nil {
				return fail(exitUnavailable, err, "")
			}
			if out == nil {
				out = []preparedRow{}
			}
			return printScan(cmd, out)
		},
	}
	cmd.Flags().StringVar(&connStr, "dsn", "", "PostgreSQL connection string (lib/pq: URL or key=value), or mysql://user:password@host:port/database for MariaDB/MySQL; @/path reads it from a file, env:VAR from the environment")
	cmd.Flags().DurationVar(&stale, "stale", time.Minute, "mark prepared transactions older than this as stale")
	return cmd
}

// printScan writes the rows as a table or JSON.
func printScan(cmd *cobra.Command, out []preparedRow) error {
	if out == nil {
		out = []preparedRow{}
	}
	w := cmd.OutOrStdout()
	if g.output == "json" {
		return printJSON(w, map[string]any{"prepared": out})
	}
	if len(out) == 0 {
		fmt.Fprintln(w, "no prepared transactions")
		return nil
	}
	tw := table(w)
	fmt.Fprintln(tw, "GID\tKIND\tDECISION AT\tAGE\tSTALE\tOWNER\tDATABASE\tLOCKS\tRELATIONS")
	for _, r := range out {
		at := "-"
		switch {
		case r.Holder != "":
			at = r.Holder
		case r.Kind == "txcoord":
			at = "log"
		}
		age := "?"
		if !r.Prepared.IsZero() {
			age = roundAge(time.Duration(r.AgeSeconds * float64(time.Second)))
		}
		owner, database, locks := r.Owner, r.Database, strconv.Itoa(r.Locks)
		if r.Server == "mysql" {
			owner, database, locks = "-", "-", "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\t%s\t%s\t%v\n", r.GID, r.Kind, at, age, r.Stale, owner, database, locks, r.Relations)
	}
	return tw.Flush()
}

// scanMySQL lists the prepared XA transactions of a MariaDB or MySQL
// server.
func scanMySQL(cmd *cobra.Command, connStr string, stale time.Duration) error {
	cfg, err := mysql.ParseDSN(connStr)
	if err != nil {
		return usageErr(dsn.Scrub(err, connStr))
	}
	c, err := gomysql.NewConnector(cfg)
	if err != nil {
		return usageErr(dsn.Scrub(err, connStr))
	}
	db := sql.OpenDB(c)
	defer db.Close()
	ctx, cancel := callCtx(cmd)
	defer cancel()
	ps, err := mysql.Scan(ctx, db)
	if err != nil {
		return fail(exitUnavailable, fmt.Errorf("scan: %w", dsn.Scrub(err, connStr)), "check --dsn; on MySQL 8 the user needs XA_RECOVER_ADMIN")
	}
	now := time.Now()
	out := make([]preparedRow, 0, len(ps))
	for _, p := range ps {
		r := preparedRow{GID: p.Raw, Kind: "foreign", XID: p.Native, Server: "mysql", Relations: []string{}}
		if g := p.GID; !g.IsZero() {
			r.Kind, r.Coordinator, r.TxID, r.Branch = "txcoord", g.Prefix+"."+g.Coordinator, g.TxID.String(), g.Branch
			r.Holder, _ = g.Holder()
			r.Prepared = g.TxID.Time()
			r.AgeSeconds = now.Sub(r.Prepared).Seconds()
			r.Stale = now.Sub(r.Prepared) > stale
		}
		out = append(out, r)
	}
	return printScan(cmd, out)
}

// isMySQL reports whether a DSN names a MariaDB or MySQL server.
func isMySQL(connStr string) bool {
	return strings.HasPrefix(connStr, "mysql://") || strings.HasPrefix(connStr, "mariadb://")
}

// parseArray reads a PostgreSQL text array of simple names: {a,b}.
func parseArray(s string) []string {
	out := []string{}
	if len(s) < 2 {
		return out
	}
	cur := ""
	for _, c := range s[1 : len(s)-1] {
		switch c {
		case ',':
			out = append(out, cur)
			cur = ""
		case '"':
		default:
			cur += string(c)
		}
	}
	if cur != "" {
		out = append(out, cur)
	}
	return out
}
