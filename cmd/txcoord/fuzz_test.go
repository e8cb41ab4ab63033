package main

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// FuzzConfigFile feeds arbitrary bytes as the YAML config: loading and
// checking must never panic, and a config that passes the check is one
// serve can use.
func FuzzConfigFile(f *testing.F) {
	f.Add([]byte("listen: 127.0.0.1:7070\ndata_dir: /tmp/x\nid: a\n"))
	f.Add([]byte("participants:\n  pay: 127.0.0.1:1\nresources:\n  db: 'host=x'\ntx_timeout: 1m\n"))
	f.Add([]byte("tls:\n  cert: a\n  key: b\n  ca: c\nadmin_cns: [ops]\n"))
	f.Add([]byte("listen: [\n"))
	f.Add([]byte("tx_timeout: -5s\nmax_tx_timeout: 1ns\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		c := defaultConfig()
		if err := loadFile(path, &c); err != nil {
			return
		}
		if err := c.validate(); err != nil {
			return
		}
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			t.Fatalf("accepted listen %q", c.Listen)
		}
		if c.DataDir == "" || c.TxTimeout <= 0 || c.MaxTxTimeout < c.TxTimeout || (c.TLS.Cert == "") != (c.TLS.Key == "") {
			t.Fatalf("accepted %+v", c)
		}
	})
}
