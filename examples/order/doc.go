// Package order is an example of global transactions across services: an
// orders service, a payment service and an inventory service, each a
// separate process with its own PostgreSQL database and each a txcoord
// participant (package sdk), and a client that places every order as one
// transaction through a txcoord server, so that the order row, the charge
// and the stock reservation commit together or not at all.
//
//	orders/     the orders service (command)
//	payment/    the payment service (command)
//	inventory/  the inventory service (command)
//	client/     places orders, some failing on purpose (command)
//	internal/shop  the services, their schemas and the client's work
//	proto/shop/v1  the services' gRPC API
//
// README.md says how to run it by hand; e2e_test.go runs it all, with
// processes killed in the middle, and checks that every order is in all
// three databases or in none.
package order
