package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant/remote"
)

// Config is everything `txcoord serve` needs. A YAML file gives it with the
// same names as the flags (dashes as underscores); flags given on the
// command line win.
type Config struct {
	Listen        string `yaml:"listen"`
	MetricsListen string `yaml:"metrics_listen"`
	DataDir       string `yaml:"data_dir"`
	ID            string `yaml:"id"`
	Prefix        string `yaml:"prefix"`
	// Resources are PostgreSQL databases (name: DSN) and MariaDB/MySQL
	// ones (name: mysql://user:password@host:port/database) this
	// coordinator's transactions may use directly; recovery scans them.
	Resources map[string]string `yaml:"resources"`
	// Participants are remote services (name: host:port) known before they
	// announce themselves.
	Participants map[string]string `yaml:"participants"`
	// Holder names the resource whose database keeps the commit decisions
	// of the server's transactions (a decision holder); empty: the log.
	Holder string `yaml:"holder"`

	TxTimeout        time.Duration `yaml:"tx_timeout"`
	MaxTxTimeout     time.Duration `yaml:"max_tx_timeout"`
	PrepareTimeout   time.Duration `yaml:"prepare_timeout"`
	CallTimeout      time.Duration `yaml:"call_timeout"`
	InDoubtTimeout   time.Duration `yaml:"in_doubt_timeout"`
	RecoveryInterval time.Duration `yaml:"recovery_interval"`
	// StartupRecovery runs a recovery pass at start (default true).
	StartupRecovery bool          `yaml:"startup_recovery"`
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// DBWait bounds how long start-up waits for the decision holder's
	// database server (and, with RequireResources, every resource's) that
	// is down or starting.
	DBWait time.Duration `yaml:"db_wait"`
	// RequireResources refuses to start while a resource's database cannot
	// be reached; by default the server starts without it (reported down)
	// and claims it when it is back. The decision holder is always
	// required.
	RequireResources bool `yaml:"require_resources"`
	// InitLog creates the decision log when DATA_DIR has none; without
	// it, a missing or empty log refuses to start.
	InitLog bool `yaml:"init_log"`

	// Etcd puts the decision log on etcd, with one primary per id and
	// Standby processes waiting to take over.
	Etcd    EtcdConfig `yaml:"etcd"`
	Standby bool       `yaml:"standby"`

	TLS            TLSConfig `yaml:"tls"`
	ParticipantTLS TLSConfig `yaml:"participant_tls"`

	// Policy is the trust model's policy file (package authz): identities
	// and their roles, reloaded when it changes and on SIGHUP. Grants add
	// identities as ROLE=SPIFFE_ID (participant:NAME=SPIFFE_ID). With
	// neither, any caller may begin, join and read, and nobody may make
	// operators' calls unless AdminLoopback.
	Policy string   `yaml:"policy"`
	Grants []string `yaml:"grants"`
	// AdminTokenFile holds tokens (one per line, file mode 0600) that
	// stand for break-glass admins; accepted over TLS only.
	AdminTokenFile string `yaml:"admin_token_file"`
	// AdminCNs is refused: identities are SPIFFE IDs, not common names.
	AdminCNs []string `yaml:"admin_cns"`
	// AdminLoopback gives callers on loopback with no credential the
	// admin role (operators' calls included).
	AdminLoopback bool `yaml:"admin_loopback"`
	// Insecure allows a non-loopback listen address without TLS or a
	// policy.
	Insecure bool `yaml:"insecure"`
	// Limits bound what callers can make the server hold.
	Limits Limits `yaml:"limits"`

	LogLevel  string `yaml:"log_level"`
	LogFormat string `yaml:"log_format"`
	// Tracing: "none" (default), "stdout", or "otlp" (to OTLPEndpoint, or
	// the OTEL_EXPORTER_OTLP_* environment).
	Tracing      string `yaml:"tracing"`
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// OTLPInsecure sends spans (which carry txids and errors) to the
	// collector without TLS.
	OTLPInsecure bool `yaml:"otlp_insecure"`
}

// TLSConfig is a certificate pair and a CA. For the server: Cert and Key
// are its own, CA (if set) makes it verify client certificates. For calls
// to participants: CA verifies them, Cert and Key are the client
// certificate.
type TLSConfig struct {
	Cert       string `yaml:"cert"`
	Key        string `yaml:"key"`
	CA         string `yaml:"ca"`
	ServerName string `yaml:"server_name"`
}

func (t TLSConfig) enabled() bool { return t.Cert != "" || t.Key != "" || t.CA != "" }

func defaultConfig() Config {
	return Config{
		Listen:           "127.0.0.1:7070",
		MetricsListen:    "127.0.0.1:9464",
		Prefix:           ids.DefaultPrefix,
		TxTimeout:        time.Minute,
		MaxTxTimeout:     10 * time.Minute,
		PrepareTimeout:   10 * time.Second,
		CallTimeout:      30 * time.Second,
		InDoubtTimeout:   time.Minute,
		RecoveryInterval: 10 * time.Second,
		StartupRecovery:  true,
		ShutdownTimeout:  30 * time.Second,
		DBWait:           time.Minute,
		LogLevel:         "info",
		LogFormat:        "text",
		Tracing:          "none",
		Limits:           defaultLimits(),
		Etcd:             EtcdConfig{Prefix: "/txcoord/", Lease: 3 * time.Second},
	}
}

// loadFile reads a YAML config file over cfg; unknown keys are errors.
func loadFile(path string, cfg *Config) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// validate checks the whole configuration and says what is wrong with it.
func (c *Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen %q: want host:port", c.Listen)
	}
	if c.MetricsListen != "" && c.MetricsListen != "off" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			bad("metrics-listen %q: want host:port, or off", c.MetricsListen)
		}
	}
	if c.DataDir == "" && !c.Etcd.enabled() {
		bad("data-dir is required: the directory of the decision log (or give --etcd-endpoints to keep it on etcd)")
	}
	c.Etcd.validate(bad)
	if c.Standby && !c.Etcd.enabled() {
		bad("standby needs etcd-endpoints: a standby waits on etcd to become the primary")
	}
	if c.ID == "" {
		bad("id is required: the coordinator id in every gid, unique among running coordinators (two with one id would resolve each other's branches)")
	} else if err := ids.ValidateName("id", c.ID); err != nil {
		bad("id: %v", err)
	}
	if err := ids.ValidateName("prefix", c.Prefix); err != nil {
		bad("prefix: %v", err)
	}
	if c.Holder != "" {
		if _, ok := c.Resources[c.Holder]; !ok {
			bad("holder %q: not one of the resources (--resource NAME=DSN): a decision holder is a PostgreSQL database the server reaches", c.Holder)
		} else if err := ids.ValidateHolderName(c.Holder); err != nil {
			bad("holder: %v", err)
		} else if isMySQL(c.Resources[c.Holder]) {
			bad("holder %q: a decision holder is a PostgreSQL database; %s is MariaDB/MySQL", c.Holder, c.Holder)
		}
	}
	for name, dsn := range c.Resources {
		if err := ids.ValidateName("resource name", name); err != nil {
			bad("resource: %v", err)
		}
		if strings.TrimSpace(dsn) == "" {
			bad("resource %s: empty DSN", name)
		}
		if _, dup := c.Participants[name]; dup {
			bad("%s is both a resource and a participant", name)
		}
	}
	for name, addr := range c.Participants {
		if err := ids.ValidateName("participant name", name); err != nil {
			bad("participant: %v", err)
		}
		if err := remote.ValidateAddress(addr); err != nil {
			bad("participant %s: %v", name, err)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"tx-timeout", c.TxTimeout}, {"max-tx-timeout", c.MaxTxTimeout}, {"prepare-timeout", c.PrepareTimeout}, {"call-timeout", c.CallTimeout}, {"in-doubt-timeout", c.InDoubtTimeout}, {"shutdown-timeout", c.ShutdownTimeout}} {
		if d.v <= 0 {
			bad("%s must be positive, not %v", d.name, d.v)
		}
	}
	if c.DBWait < 0 {
		bad("db-wait %v: want a duration of 0 or more", c.DBWait)
	}
	if c.MaxTxTimeout < c.TxTimeout {
		bad("max-tx-timeout %v is below tx-timeout %v", c.MaxTxTimeout, c.TxTimeout)
	}
	if c.RecoveryInterval == 0 {
		bad("recovery-interval must be positive (or negative to turn the periodic pass off)")
	}
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		bad("tls-cert and tls-key go together")
	}
	if c.TLS.CA != "" && c.TLS.Cert == "" {
		bad("tls-client-ca needs tls-cert and tls-key: client certificates are verified only over TLS")
	}
	if (c.ParticipantTLS.Cert == "") != (c.ParticipantTLS.Key == "") {
		bad("participant-tls-cert and participant-tls-key go together")
	}
	if len(c.AdminCNs) > 0 {
		bad("%v", errAdminCN)
	}
	if _, err := parseGrants(c.Grants); err != nil {
		bad("%v", err)
	}
	if c.AdminTokenFile != "" && !c.TLS.enabled() {
		bad("admin-token-file needs TLS (tls-cert, tls-key): a token is refused over a connection without TLS")
	}
	c.Limits.validate(bad)
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		bad("log-format %q: want text or json", c.LogFormat)
	}
	switch c.Tracing {
	case "none", "stdout", "otlp":
	default:
		bad("tracing %q: want none, stdout or otlp", c.Tracing)
	}
	return errors.Join(errs...)
}

// adminTokens reads the admin token file: one token per line, blank lines
// and # comments ignored.
func adminTokens(path string) ([]string, error) {
	if path == "" {
		return nil, nil
	}
	if err := checkSecretFile(path); err != nil {
		return nil, fmt.Errorf("admin token file: %w", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("admin token file: %w", err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if len(line) < 16 {
			return nil, fmt.Errorf("admin token file %s: a token shorter than 16 characters is too easy to guess", path)
		}
		out = append(out, line)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("admin token file %s holds no token", path)
	}
	return out, nil
}

// parsePairs parses repeated NAME=VALUE flags.
func parsePairs(flag string, vals []string) (map[string]string, error) {
	out := map[string]string{}
	for _, v := range vals {
		name, val, ok := strings.Cut(v, "=")
		if !ok || name == "" || val == "" {
			return nil, fmt.Errorf("--%s %q: want NAME=VALUE", flag, v)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("--%s: %s given twice", flag, name)
		}
		out[name] = val
	}
	return out, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
