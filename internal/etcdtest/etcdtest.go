// Package etcdtest starts throwaway etcd members inside the test process
// (go.etcd.io/etcd/server/v3/embed), on free loopback ports in temporary
// directories, with their fsync on.
package etcdtest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// Cluster is a running etcd cluster.
type Cluster struct {
	Endpoints []string // client URLs, one per member
	members   []*embed.Etcd
	dirs      []string
}

func freeURL(scheme string) (url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, err
	}
	defer l.Close()
	return url.URL{Scheme: scheme, Host: l.Addr().String()}, nil
}

// TLS files of members that serve clients over mutual TLS.
type TLS struct {
	Cert, Key string // the members' certificate (for 127.0.0.1) and key
	CA        string // clients' certificates must chain to it
}

// Start starts a cluster of n members and waits until it is ready.
func Start(n int) (*Cluster, error) { return start(n, nil) }

// StartTLS starts a cluster of n members that serve clients only over
// TLS and refuse a client without a certificate from tls.CA.
func StartTLS(n int, tls TLS) (*Cluster, error) { return start(n, &tls) }

func start(n int, tls *TLS) (*Cluster, error) {
	scheme := "http"
	if tls != nil {
		scheme = "https"
	}
	c := &Cluster{}
	cfgs := make([]*embed.Config, n)
	var initial []string
	for i := range n {
		dir, err := os.MkdirTemp("", "txcoord-etcd-")
		if err != nil {
			c.Close()
			return nil, err
		}
		c.dirs = append(c.dirs, dir)
		client, err1 := freeURL(scheme)
		peer, err2 := freeURL("http")
		if err := errors.Join(err1, err2); err != nil {
			c.Close()
			return nil, err
		}
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = dir
		cfg.LogLevel = "panic" // its shutdown logs errors about closed listeners
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		if tls != nil {
			cfg.ClientTLSInfo = transport.TLSInfo{CertFile: tls.Cert, KeyFile: tls.Key, TrustedCAFile: tls.CA, ClientCertAuth: true}
		}
		cfgs[i] = cfg
		initial = append(initial, cfg.Name+"="+peer.String())
		c.Endpoints = append(c.Endpoints, client.String())
	}
	for _, cfg := range cfgs {
		cfg.InitialCluster = strings.Join(initial, ",")
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("etcdtest: start %s: %w", cfg.Name, err)
		}
		c.members = append(c.members, e)
	}
	for _, e := range c.members {
		select {
		case <-e.Server.ReadyNotify():
		case <-time.After(60 * time.Second):
			c.Close()
			return nil, errors.New("etcdtest: the cluster did not become ready within 60s")
		}
	}
	return c, nil
}

// Stop stops member i (its data stays; it does not restart).
func (c *Cluster) Stop(i int) {
	if c.members[i] != nil {
		c.members[i].Close()
		c.members[i] = nil
	}
}

// Close stops every member and removes their data.
func (c *Cluster) Close() {
	for i := range c.members {
		c.Stop(i)
	}
	for _, d := range c.dirs {
		_ = os.RemoveAll(d)
	}
}
