package remote

import (
	"strings"
	"testing"
)

// FuzzParseGTRID: the transaction a call carries in its metadata comes
// from outside; it parses or is refused, never panics, and what parses
// prints back the same and holds only gid bytes.
func FuzzParseGTRID(f *testing.F) {
	f.Add("txc.c1.01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b")
	f.Add("txc.c1")
	f.Add("t'x.c1.01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b")
	f.Add("...")
	f.Fuzz(func(t *testing.T, s string) {
		tx, err := ParseGTRID(s)
		if err != nil {
			return
		}
		if tx.GTRID() != s || strings.ContainsAny(s, "'\"; \\") {
			t.Fatalf("%q parsed as %+v", s, tx)
		}
	})
}
