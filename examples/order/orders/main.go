// Command orders is the order example's orders service: it records each
// order as a row in its own PostgreSQL database, as a txcoord participant.
// It creates its table if it is missing, and stops gracefully on SIGTERM
// or SIGINT.
//
//	orders --listen 127.0.0.1:7101 --dsn 'postgres://postgres@127.0.0.1:5432/orders?sslmode=disable' --coordinator 127.0.0.1:7070
package main

import (
	"os"

	"github.com/txcoord/txcoord/examples/order/internal/shop"
)

func main() {
	os.Exit(shop.Main(shop.Orders, os.Args[1:]))
}
