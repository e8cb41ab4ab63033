package main

import "testing"

// The example runs to its own invariant check (total balance unchanged,
// nothing prepared, no decision rows left) on each kind of bank pair.
func TestTransferKeepsTheTotal(t *testing.T) {
	for _, c := range []struct {
		name              string
		embedded, mariadb bool
	}{
		{"postgres", false, false},
		{"postgres+mariadb", false, true},
		{"embedded", true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := run(4, 200, 20, 0.1, c.embedded, c.mariadb); err != nil {
				t.Fatal(err)
			}
		})
	}
}
