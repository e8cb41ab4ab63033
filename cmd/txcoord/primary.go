package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/txcoord/txcoord/pki"
	etcdwal "github.com/txcoord/txcoord/wal/etcd"
)

// EtcdConfig puts the decision log on etcd and makes one process the
// primary of the coordinator id (an etcd election); any number of others
// wait as standbys and take over when the primary's lease ends.
type EtcdConfig struct {
	Endpoints []string      `yaml:"endpoints"`
	Prefix    string        `yaml:"prefix"`
	Lease     time.Duration `yaml:"lease"`
	CA        string        `yaml:"ca"`
	Cert      string        `yaml:"cert"`
	Key       string        `yaml:"key"`
	// KeepHistory leaves etcd's revision history alone.
	KeepHistory bool `yaml:"keep_history"`
}

func (e EtcdConfig) enabled() bool { return len(e.Endpoints) > 0 }

func (e EtcdConfig) validate(bad func(string, ...any)) {
	if !e.enabled() {
		return
	}
	if !strings.HasPrefix(e.Prefix, "/") || !strings.HasSuffix(e.Prefix, "/") {
		bad("etcd-prefix %q: want a key prefix that starts and ends with /", e.Prefix)
	}
	if e.Lease < 2*time.Second {
		bad("etcd-lease %v: at least 2s (the lease is renewed every third of it)", e.Lease)
	}
	if (e.Cert == "") != (e.Key == "") {
		bad("etcd-cert and etcd-key go together")
	}
}

// errLostPrimary ends serve when the primary's lease ended: a standby may
// have taken over, and this process must decide nothing more.
var errLostPrimary = errors.New("lost the primary's lease on etcd: stopped serving (a standby takes over)")

// primary is this process's hold on the coordinator id on etcd, and the
// decision log it may write while it holds it.
type primary struct {
	once sync.Once
	cli  *clientv3.Client
	sess *concurrency.Session
	el   *concurrency.Election
	log  *etcdwal.Log
}

// becomePrimary campaigns for the coordinator id: without standby it
// refuses when another process is the primary; with it, it waits. Once
// elected it opens the log with every write fenced on the election key.
func becomePrimary(ctx context.Context, cfg Config, logger *slog.Logger) (*primary, error) {
	ec := clientv3.Config{Endpoints: cfg.Etcd.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if cfg.Etcd.CA != "" || cfg.Etcd.Cert != "" {
		r, err := pki.NewReloader(pki.Files{Cert: cfg.Etcd.Cert, Key: cfg.Etcd.Key, CA: cfg.Etcd.CA},
			func(err error) { logger.Error("etcd tls", "err", err) })
		if err != nil {
			return nil, fmt.Errorf("etcd tls: %w", err)
		}
		ec.TLS = r.ClientConfig("", "")
	}
	cli, err := clientv3.New(ec)
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	p := &primary{cli: cli}
	fail := func(err error) (*primary, error) {
		p.close()
		return nil, err
	}
	// The lease lives until close or abandon, not until ctx (a stop
	// signal) ends: a graceful stop resigns, it does not lose the lease.
	// The lease is granted here, within a deadline: a cluster that cannot
	// be reached (a wrong address, a refused certificate) is an error at
	// start, not a wait without end.
	ttl := int(cfg.Etcd.Lease.Round(time.Second) / time.Second)
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	lease, err := cli.Grant(gctx, int64(ttl))
	cancel()
	if err != nil {
		return fail(fmt.Errorf("etcd %s: open a lease (is the cluster reachable, and are --etcd-ca, --etcd-cert and --etcd-key right?): %w", strings.Join(cfg.Etcd.Endpoints, ","), err))
	}
	p.sess, err = concurrency.NewSession(cli, concurrency.WithTTL(ttl), concurrency.WithLease(lease.ID), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return fail(fmt.Errorf("etcd %s: open a lease: %w", strings.Join(cfg.Etcd.Endpoints, ","), err))
	}
	base := cfg.Etcd.Prefix + cfg.Prefix + "." + cfg.ID + "/"
	p.el = concurrency.NewElection(p.sess, base+"primary")
	host, _ := os.Hostname()
	me := fmt.Sprintf("%s pid %d listening on %s", host, os.Getpid(), cfg.Listen)
	if !cfg.Standby {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := p.el.Leader(lctx)
		cancel()
		switch {
		case err == nil && len(resp.Kvs) > 0:
			return fail(fmt.Errorf("coordinator id %s.%s has a primary already (%s): start this one with --standby to take over when it stops", cfg.Prefix, cfg.ID, resp.Kvs[0].Value))
		case err != nil && !errors.Is(err, concurrency.ErrElectionNoLeader):
			return fail(fmt.Errorf("etcd: ask for the primary: %w", err))
		}
	} else {
		logger.Info("standby: waiting to become the primary of the coordinator id", "id", cfg.Prefix+"."+cfg.ID, "etcd", strings.Join(cfg.Etcd.Endpoints, ","))
	}
	began := time.Now()
	if err := p.el.Campaign(ctx, me); err != nil {
		return fail(fmt.Errorf("etcd: campaign for the coordinator id: %w", err))
	}
	key, rev := p.el.Key(), p.el.Rev()
	fence := func() []clientv3.Cmp { return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", rev)} }
	if p.log, err = etcdwal.Open(ctx, cli, etcdwal.Options{Prefix: base + "log/", Fence: fence, KeepHistory: cfg.Etcd.KeepHistory}); err != nil {
		return fail(fmt.Errorf("etcd: open the decision log: %w", err))
	}
	logger.Info("primary of the coordinator id", "id", cfg.Prefix+"."+cfg.ID, "waited", time.Since(began).Round(time.Millisecond), "epoch", p.log.Epoch())
	return p, nil
}

// lost is closed when the lease ends (etcd unreachable past the lease, or
// revoked).
func (p *primary) lost() <-chan struct{} { return p.sess.Done() }

// abandon lets go after the lease ended: nothing more is sent to etcd
// (the links may be cut); what was not written stays unwritten.
func (p *primary) abandon() {
	p.once.Do(func() {
		_ = p.cli.Close() // in-flight and later calls fail at once
		if p.log != nil {
			_ = p.log.Close()
		}
	})
}

// close gives the id up: a standby takes over at once.
func (p *primary) close() {
	if p.log != nil {
		_ = p.log.Close()
	}
	if p.el != nil && p.el.Key() != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_ = p.el.Resign(ctx)
		cancel()
	}
	if p.sess != nil {
		_ = p.sess.Close()
	}
	_ = p.cli.Close()
}
