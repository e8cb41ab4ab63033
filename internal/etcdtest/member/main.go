// Command member runs one etcd member (go.etcd.io/etcd/server/v3/embed),
// for tests that want etcd in a process of its own: to kill it, or to keep
// its goroutines out of the test's. It prints "ready" once the member
// serves clients and stops on SIGTERM or SIGINT. internal/etcdtest starts
// it (StartProcesses); it has no use of its own.
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	name := flag.String("name", "m0", "member name")
	dir := flag.String("dir", "", "data directory")
	client := flag.String("client-url", "", "client URL to listen on and advertise")
	peer := flag.String("peer-url", "", "peer URL to listen on and advertise")
	initial := flag.String("initial-cluster", "", "every member as name=peer-url, comma-separated")
	flag.Parse()
	if err := run(*name, *dir, *client, *peer, *initial); err != nil {
		fmt.Fprintln(os.Stderr, "member:", err)
		os.Exit(1)
	}
}

func run(name, dir, client, peer, initial string) error {
	cu, err := url.Parse(client)
	if err != nil {
		return fmt.Errorf("client-url: %w", err)
	}
	pu, err := url.Parse(peer)
	if err != nil {
		return fmt.Errorf("peer-url: %w", err)
	}
	if dir == "" || initial == "" {
		return fmt.Errorf("dir and initial-cluster are required")
	}
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir, cfg.InitialCluster = name, dir, initial
	cfg.LogLevel = "error"
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	defer e.Close()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-e.Server.ReadyNotify():
		fmt.Println("ready")
	case err := <-e.Err():
		return err
	case <-stop:
		return nil
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("not ready within 2m")
	}
	select {
	case err := <-e.Err():
		return err
	case <-stop:
		return nil
	}
}
