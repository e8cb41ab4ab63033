// Command inventory is the order example's inventory service: for each
// order it decrements the item's stock and records a reservation row, in
// its own PostgreSQL database, as a txcoord participant. A reservation
// above the stock fails with FAILED_PRECONDITION. It creates its tables
// and seeds the stock if they are missing, and stops gracefully on SIGTERM
// or SIGINT.
//
//	inventory --listen 127.0.0.1:7103 --dsn 'postgres://postgres@127.0.0.1:5432/inventory?sslmode=disable' --coordinator 127.0.0.1:7070
package main

import (
	"os"

	"github.com/txcoord/txcoord/examples/order/internal/shop"
)

func main() {
	os.Exit(shop.Main(shop.Inventory, os.Args[1:]))
}
