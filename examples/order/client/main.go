// Command client places orders through txcoord: each order is one global
// transaction that creates the order at the orders service, charges the
// customer at the payment service and reserves the item at the inventory
// service, so that all three happen or none does. A share of the orders
// fails on purpose (insufficient funds, out of stock, or the client rolling
// back after every service said yes). It prints how many orders committed,
// aborted, and ended with an unknown outcome.
//
//	client --coordinator 127.0.0.1:7070 --orders 100 --workers 8 --fail-rate 0.2
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/txcoord/txcoord/examples/order/internal/shop"
)

// Exit codes.
const (
	exitFailure = 1
	exitUsage   = 2
	// exitUnknown: some orders' outcome was still unknown at the end.
	exitUnknown = 3
)

func main() {
	cfg, verbose, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		os.Exit(exitUsage)
	}
	if verbose {
		cfg.Progress = func(r shop.Result) {
			line := fmt.Sprintf("%s tx %s: %v", r.Order.ID, r.TxID, r.Outcome)
			if r.Err != nil {
				line += fmt.Sprintf(" (%v)", r.Err)
			}
			fmt.Println(line)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	rep, err := shop.PlaceOrders(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		stop()
		os.Exit(exitFailure)
	}
	rep.Print(os.Stdout)
	if rep.Unknown > 0 {
		stop()
		os.Exit(exitUnknown)
	}
}

func parseFlags(args []string, stderr io.Writer) (shop.ClientConfig, bool, error) {
	var cfg shop.ClientConfig
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Coordinator, "coordinator", "127.0.0.1:7070", "host:port of the txcoord server (host:port,host:port for a primary and its standbys)")
	fs.StringVar(&cfg.OrdersAddr, "orders-addr", "127.0.0.1:7101", "host:port of the orders service")
	fs.StringVar(&cfg.PaymentAddr, "payment-addr", "127.0.0.1:7102", "host:port of the payment service")
	fs.StringVar(&cfg.InventoryAddr, "inventory-addr", "127.0.0.1:7103", "host:port of the inventory service")
	fs.IntVar(&cfg.Orders, "orders", 100, "orders to place")
	fs.IntVar(&cfg.Workers, "workers", 8, "concurrent workers")
	fs.Float64Var(&cfg.FailRate, "fail-rate", 0.2, "share of orders that fail on purpose (0..1)")
	fs.Uint64Var(&cfg.Seed, "seed", uint64(time.Now().UnixNano()), "random seed of the orders")
	fs.StringVar(&cfg.IDPrefix, "id-prefix", "o-"+time.Now().UTC().Format("20060102T150405")+"-", "prefix of the order ids (they must be new to the databases)")
	fs.DurationVar(&cfg.OrderTimeout, "order-timeout", 30*time.Second, "time limit of one order's transaction")
	fs.DurationVar(&cfg.ResolveTimeout, "resolve-timeout", time.Minute, "how long to keep asking the coordinator about orders whose outcome was unknown at commit")
	fs.StringVar(&cfg.TLS.Cert, "tls-cert", "", "client certificate (PEM) with its spiffe:// identity; turns mutual TLS on")
	fs.StringVar(&cfg.TLS.Key, "tls-key", "", "private key (PEM) of --tls-cert")
	fs.StringVar(&cfg.TLS.CA, "tls-ca", "", "CA (PEM) the coordinator's and services' certificates must chain to")
	verbose := fs.Bool("v", false, "print every order's outcome")
	if err := fs.Parse(args); err != nil {
		return cfg, false, err
	}
	if err := func() error {
		switch {
		case fs.NArg() > 0:
			return fmt.Errorf("unexpected arguments: %q", fs.Args())
		case cfg.Orders < 0:
			return errors.New("--orders must be >= 0")
		case cfg.Workers < 1:
			return errors.New("--workers must be >= 1")
		case cfg.FailRate < 0 || cfg.FailRate > 1:
			return errors.New("--fail-rate must be within 0..1")
		}
		return nil
	}(); err != nil {
		fmt.Fprintln(stderr, "client:", err)
		return cfg, false, err
	}
	return cfg, *verbose, nil
}
