// Package etcdtest starts throwaway etcd members inside the test process
// (go.etcd.io/etcd/server/v3/embed) or as processes of their own
// (StartProcesses, with the program in ./member), on free loopback ports
// in temporary directories, with their fsync on.
package etcdtest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// Cluster is a running etcd cluster.
type Cluster struct {
	Endpoints []string // client URLs, one per member
	members   []*embed.Etcd
	procs     []*exec.Cmd
	dirs      []string
	taken     map[string]bool // addresses handed to members
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

// start starts a cluster, again with new ports when a port it was handed
// was taken (by another process) before a member bound it.
func start(n int, tls *TLS) (*Cluster, error) {
	for attempt := 1; ; attempt++ {
		c, err := startOnce(n, tls)
		// etcd does not always wrap the listener's error.
		taken := errors.Is(err, syscall.EADDRINUSE) || err != nil && strings.Contains(err.Error(), "address already in use")
		if !taken || attempt == 5 {
			return c, err
		}
	}
}

func startOnce(n int, tls *TLS) (*Cluster, error) {
	scheme := "http"
	if tls != nil {
		scheme = "https"
	}
	c := &Cluster{}
	cfgs := make([]*embed.Config, n)
	var initial []string
	for i := range n {
		dir, client, peer, err := c.place(scheme)
		if err != nil {
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

// StartProcesses starts a cluster of n members, each a process running
// bin (a build of ./member) that dies with the caller, and waits until
// every member serves clients. Each member's output goes to member-N.log
// in its directory.
func StartProcesses(n int, bin string) (*Cluster, error) {
	c := &Cluster{}
	type member struct{ name, dir, client, peer string }
	var ms []member
	var initial []string
	for i := range n {
		dir, client, peer, err := c.place("http")
		if err != nil {
			c.Close()
			return nil, err
		}
		m := member{fmt.Sprintf("m%d", i), dir, client.String(), peer.String()}
		ms = append(ms, m)
		initial = append(initial, m.name+"="+m.peer)
		c.Endpoints = append(c.Endpoints, m.client)
	}
	ready := make(chan error, n)
	for i, m := range ms {
		cmd := exec.Command(bin, "-name", m.name, "-dir", filepath.Join(m.dir, "data"), "-client-url", m.client,
			"-peer-url", m.peer, "-initial-cluster", strings.Join(initial, ","))
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		logf, err := os.Create(filepath.Join(m.dir, fmt.Sprintf("member-%d.log", i)))
		if err != nil {
			c.Close()
			return nil, err
		}
		cmd.Stderr = logf
		out, err := cmd.StdoutPipe()
		if err != nil {
			logf.Close()
			c.Close()
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			logf.Close()
			c.Close()
			return nil, fmt.Errorf("etcdtest: start %s: %w", bin, err)
		}
		logf.Close()
		c.procs = append(c.procs, cmd)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if sc.Text() == "ready" {
					ready <- nil
					_, _ = io.Copy(io.Discard, out)
					return
				}
			}
			ready <- fmt.Errorf("etcdtest: member %s exited before it was ready (see %s)", m.name, m.dir)
		}()
	}
	timeout := time.After(60 * time.Second)
	for range n {
		select {
		case err := <-ready:
			if err != nil {
				c.Close()
				return nil, err
			}
		case <-timeout:
			c.Close()
			return nil, errors.New("etcdtest: the cluster did not become ready within 60s")
		}
	}
	return c, nil
}

// place makes a member's data directory (removed by Close) and picks its
// client URL (with scheme) and peer URL.
func (c *Cluster) place(scheme string) (dir string, client, peer url.URL, err error) {
	if dir, err = os.MkdirTemp("", "txcoord-etcd-"); err != nil {
		return "", client, peer, err
	}
	c.dirs = append(c.dirs, dir)
	client, err1 := c.freshURL(scheme)
	peer, err2 := c.freshURL("http")
	return dir, client, peer, errors.Join(err1, err2)
}

// freshURL is freeURL with a port no member of c was given yet: the
// kernel may hand the same free port out twice in a row, and etcd refuses
// a cluster that names one URL twice.
func (c *Cluster) freshURL(scheme string) (url.URL, error) {
	if c.taken == nil {
		c.taken = map[string]bool{}
	}
	for range 100 {
		u, err := freeURL(scheme)
		if err != nil {
			return u, err
		}
		if !c.taken[u.Host] {
			c.taken[u.Host] = true
			return u, nil
		}
	}
	return url.URL{}, errors.New("etcdtest: no fresh port in 100 tries")
}

// Stop stops member i (its data stays; it does not restart). A member
// that is a process is killed (SIGKILL).
func (c *Cluster) Stop(i int) {
	if i < len(c.members) && c.members[i] != nil {
		c.members[i].Close()
		c.members[i] = nil
	}
	if i < len(c.procs) && c.procs[i] != nil {
		_ = c.procs[i].Process.Kill()
		_ = c.procs[i].Wait()
		c.procs[i] = nil
	}
}

// Close stops every member and removes their data.
func (c *Cluster) Close() {
	for i := range max(len(c.members), len(c.procs)) {
		c.Stop(i)
	}
	for _, d := range c.dirs {
		_ = os.RemoveAll(d)
	}
}
