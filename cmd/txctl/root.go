package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

type globals struct {
	server  string
	timeout time.Duration
	output  string
	caFile  string
	cert    string
	key     string
	token   string
}

var g = &globals{}

func newRootCmd() *cobra.Command {
	*g = globals{}
	root := &cobra.Command{
		Use:   "txctl",
		Short: "See and resolve txcoord transactions",
		Long: `txctl shows the transactions of a running txcoord server and the prepared
branches in your databases, resolves stuck transactions safely, runs a
recovery pass on demand, and reads the decision log offline.

The server is --server (or $TXCOORD_SERVER, default 127.0.0.1:7070).

Exit codes: 0 done; 1 error; 2 bad flags or arguments; 3 refused by the
server (nothing changed); 4 no such transaction; 5 server or database
unreachable; 6 damaged log file; 7 log file in use by a running server.`,
		Example: `  txctl list --state in-doubt --older-than 5m
  txctl show 01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b
  txctl resolve 01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b --abort --reason "client gone"
  txctl scan --dsn 'postgres://postgres@db1/ledger?sslmode=disable'
  source <(txctl completion bash)`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if g.output != "table" && g.output != "json" {
				return usageErr(fmt.Errorf("-o %q: want table or json", g.output))
			}
			if g.timeout <= 0 {
				return usageErr(fmt.Errorf("--timeout must be positive, got %v", g.timeout))
			}
			if g.token != "" {
				if _, err := os.Stat(g.token); err != nil {
					return usageErr(fmt.Errorf("--token-file: %w", err))
				}
			}
			if (g.cert == "") != (g.key == "") {
				return usageErr(errors.New("--tls-cert and --tls-key go together"))
			}
			return nil
		},
	}
	def := os.Getenv("TXCOORD_SERVER")
	if def == "" {
		def = "127.0.0.1:7070"
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.server, "server", def, "txcoord server address ($TXCOORD_SERVER)")
	pf.DurationVar(&g.timeout, "timeout", 30*time.Second, "give up after this long")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	pf.StringVar(&g.caFile, "tls-ca", "", "CA (PEM) to verify the server; turns TLS on")
	pf.StringVar(&g.cert, "tls-cert", "", "client certificate (PEM) for mutual TLS")
	pf.StringVar(&g.key, "tls-key", "", "client private key (PEM)")
	pf.StringVar(&g.token, "token-file", os.Getenv("TXCOORD_TOKEN_FILE"), "file holding the admin token for resolve and recover ($TXCOORD_TOKEN_FILE; or the token itself in $TXCOORD_TOKEN)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErr(err) })
	root.AddCommand(newListCmd(), newShowCmd(), newResolveCmd(), newRecoverCmd(), newScanCmd(), newWALCmd(), newCertsCmd())
	return root
}

type usage struct{ error }

func usageErr(err error) error { return fail(exitUsage, usage{err}, "see --help") }

func isUsage(err error) bool {
	var u usage
	if errors.As(err, &u) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "unknown command") || strings.Contains(msg, "unknown flag") ||
		strings.Contains(msg, "accepts ") || strings.Contains(msg, "requires at least") || strings.Contains(msg, "required flag")
}

// dial connects to the server.
func dial() (txcoordv1.CoordinatorClient, func(), error) {
	creds := insecure.NewCredentials()
	if g.caFile != "" || g.cert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if g.caFile != "" {
			b, err := os.ReadFile(g.caFile)
			if err != nil {
				return nil, nil, fail(exitUsage, err, "--tls-ca names the CA that signed the server's certificate")
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(b) {
				return nil, nil, fail(exitUsage, fmt.Errorf("%s: no PEM certificate", g.caFile), "")
			}
			tc.RootCAs = pool
		}
		if g.cert != "" {
			cert, err := tls.LoadX509KeyPair(g.cert, g.key)
			if err != nil {
				return nil, nil, fail(exitUsage, err, "")
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		creds = credentials.NewTLS(tc)
	}
	if token() != "" && g.caFile == "" && g.cert == "" {
		return nil, nil, fail(exitUsage, errors.New("refusing to send a token without TLS: it would travel in plaintext (and the server refuses it)"),
			"give --tls-ca (the CA of the server's certificate), or use a client certificate (--tls-cert, --tls-key)")
	}
	conn, err := grpc.NewClient(g.server, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, nil, fail(exitUsage, err, "--server wants host:port")
	}
	return txcoordv1.NewCoordinatorClient(conn), func() { _ = conn.Close() }, nil
}

func callCtx(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	if tok := token(); tok != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	return context.WithTimeout(ctx, g.timeout)
}

// token is the bearer token to send: --token-file's, or $TXCOORD_TOKEN.
func token() string {
	if g.token != "" {
		if b, err := os.ReadFile(g.token); err == nil {
			return strings.TrimSpace(string(b))
		}
	}
	return os.Getenv("TXCOORD_TOKEN")
}

// rpcErr maps a server answer to an exit code and a hint.
func rpcErr(err error) error {
	st := status.Convert(err)
	switch st.Code() {
	case codes.NotFound:
		return fail(exitNotFound, errors.New(st.Message()), "")
	case codes.FailedPrecondition:
		return fail(exitRefused, errors.New(st.Message()), "")
	case codes.InvalidArgument:
		return fail(exitUsage, errors.New(st.Message()), "")
	case codes.Unauthenticated, codes.PermissionDenied:
		return fail(exitRefused, errors.New(st.Message()), "the server's policy decides who may call what: present a client certificate whose spiffe:// identity has the role (--tls-cert, --tls-key, --tls-ca), or a token over TLS (--token-file)")
	case codes.Unavailable, codes.DeadlineExceeded:
		return fail(exitUnavailable, fmt.Errorf("%s: %s", st.Code(), st.Message()),
			fmt.Sprintf("is txcoord running at %s? Set --server or $TXCOORD_SERVER; raise --timeout for a slow server", g.server))
	case codes.DataLoss:
		return fail(exitCorrupt, errors.New(st.Message()), "stop the server and run `txctl wal verify --wal FILE`")
	}
	return fail(exitError, fmt.Errorf("%s: %s", st.Code(), st.Message()), "")
}
