package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/pki"
)

func newCertsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Issue the certificates and tokens of the trust model",
		Long: `Make a certificate authority, and certificates whose identity is a SPIFFE ID
(spiffe://trust-domain/path, in the URI SAN) for the coordinator, services,
clients and operators; and bearer tokens with the digest a policy file lists.
Keys are written with mode 0600. For production, use your own CA (SPIRE,
cert-manager, Vault): txcoord needs only the URI SAN.`,
		Example: `  txctl certs ca --dir pki
  txctl certs issue --dir pki --name txcoord --id spiffe://example.org/txcoord/orders-1
  txctl certs issue --dir pki --name payment --id spiffe://example.org/svc/payment
  txctl certs issue --dir pki --name alice --id spiffe://example.org/ops/alice --client
  txctl certs token --out alice.token`,
	}
	cmd.AddCommand(newCertsCACmd(), newCertsIssueCmd(), newCertsTokenCmd())
	return cmd
}

func newCertsCACmd() *cobra.Command {
	var dir, name string
	var validity time.Duration
	cmd := &cobra.Command{
		Use:     "ca",
		Short:   "Make a certificate authority (DIR/ca.pem, DIR/ca-key.pem)",
		Example: "  txctl certs ca --dir pki",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if validity <= 0 {
				return usageErr(fmt.Errorf("--validity must be positive, got %v", validity))
			}
			if _, err := os.Stat(filepath.Join(dir, "ca-key.pem")); err == nil {
				return fail(exitRefused, fmt.Errorf("%s already holds a CA key", dir), "a new CA would invalidate every certificate issued by the old one; choose another --dir")
			}
			ca, err := pki.NewCA(name, validity)
			if err != nil {
				return err
			}
			kb, err := ca.KeyPEM()
			if err != nil {
				return err
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			if err := writeFile(filepath.Join(dir, "ca.pem"), ca.CertPEM(), 0o644); err != nil {
				return err
			}
			if err := writeFile(filepath.Join(dir, "ca-key.pem"), kb, 0o600); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and %s (keep the key offline)\n", filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "pki", "directory of the CA's files")
	cmd.Flags().StringVar(&name, "name", "txcoord CA", "the CA's common name")
	cmd.Flags().DurationVar(&validity, "validity", 5*365*24*time.Hour, "how long the CA is valid")
	return cmd
}

func newCertsIssueCmd() *cobra.Command {
	var dir, name, id string
	var dns []string
	var ips []net.IP
	var validity time.Duration
	var client, server bool
	cmd := &cobra.Command{
		Use:   "issue",
		Short: "Issue a certificate for a SPIFFE ID (DIR/NAME.pem, DIR/NAME-key.pem)",
		Example: `  txctl certs issue --dir pki --name txcoord --id spiffe://example.org/txcoord/orders-1
  txctl certs issue --dir pki --name alice --id spiffe://example.org/ops/alice --client`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := ids.ValidateName("--name", name); err != nil {
				return usageErr(err)
			}
			if _, err := pki.ParseSPIFFE(id); err != nil {
				return usageErr(fmt.Errorf("--id: %w", err))
			}
			if validity <= 0 {
				return usageErr(fmt.Errorf("--validity must be positive, got %v", validity))
			}
			ca, err := pki.LoadCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
			if err != nil {
				return fail(exitUsage, err, "make a CA first: txctl certs ca --dir "+dir)
			}
			certPEM, keyPEM, err := ca.Issue(pki.Leaf{ID: id, DNSNames: dns, IPs: ips, Client: client, Server: server,
				NotAfter: time.Now().Add(validity)})
			if err != nil {
				return err
			}
			cf, kf := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
			if err := writeFile(cf, certPEM, 0o644); err != nil {
				return err
			}
			if err := writeFile(kf, keyPEM, 0o600); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and %s for %s\n", cf, kf, id)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "pki", "directory of the CA's files, where the certificate is written")
	f.StringVar(&name, "name", "", "file name of the certificate (required)")
	f.StringVar(&id, "id", "", "SPIFFE ID of the holder, spiffe://trust-domain/path (required)")
	f.StringSliceVar(&dns, "dns", []string{"localhost"}, "DNS names a server certificate is valid for")
	f.IPSliceVar(&ips, "ip", []net.IP{net.ParseIP("127.0.0.1")}, "IP addresses a server certificate is valid for")
	f.BoolVar(&client, "client", false, "a client certificate only")
	f.BoolVar(&server, "server", false, "a server certificate only (default: both)")
	f.DurationVar(&validity, "validity", 90*24*time.Hour, "how long the certificate is valid")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("id")
	return cmd
}

func newCertsTokenCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:     "token",
		Short:   "Make a bearer token: writes it to --out (mode 0600) and prints the digest a policy lists",
		Example: "  txctl certs token --out alice.token",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageErr(errors.New("--out is required: the token is written to a file, never printed"))
			}
			b := make([]byte, 32)
			if _, err := rand.Read(b); err != nil {
				return err
			}
			tok := base64.RawURLEncoding.EncodeToString(b)
			if err := writeFile(out, []byte(tok+"\n"), 0o600); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s; in the policy, under the identity it stands for:\n    token_sha256: [%s]\n", out, authz.TokenDigest(tok))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write the token to (required)")
	return cmd
}

// writeFile writes b to a new file; an existing file is not overwritten.
func writeFile(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fail(exitRefused, err, "an existing file is never overwritten: remove it first")
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
