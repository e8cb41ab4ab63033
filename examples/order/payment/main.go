// Command payment is the order example's payment service: for each order
// it debits the customer's balance and records a payment row, in its own
// PostgreSQL database, as a txcoord participant. A charge above the
// balance fails with FAILED_PRECONDITION. It creates its tables and seeds
// the accounts if they are missing, and stops gracefully on SIGTERM or
// SIGINT.
//
//	payment --listen 127.0.0.1:7102 --dsn 'postgres://postgres@127.0.0.1:5432/payment?sslmode=disable' --coordinator 127.0.0.1:7070
package main

import (
	"os"

	"github.com/txcoord/txcoord/examples/order/internal/shop"
)

func main() {
	os.Exit(shop.Main(shop.Payment, os.Args[1:]))
}
