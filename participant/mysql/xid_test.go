package mysql

import (
	"strings"
	"testing"

	"github.com/txcoord/txcoord/ids"
)

// A gid maps onto an xid and back, with its database's tag where that
// fits and without where it does not; XA RECOVER's rows, raw or in hex,
// are cut by the lengths the server reports, and anything else is foreign.
func TestXIDRoundTripAndRecoverRows(t *testing.T) {
	id, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	g, err := ids.NewGID("txc", "c1", id, "bank_a-h-ledger")
	if err != nil {
		t.Fatal(err)
	}
	gtrid, bqual := []byte(g.GTRID()), []byte(bqualIn(g.Branch, "shop"))
	if string(bqual) != g.Branch+tagOf("shop") || tagOf("shop") == tagOf("ledger") || len(tagOf("shop")) != 9 {
		t.Fatalf("bqual %q, tags %q %q", bqual, tagOf("shop"), tagOf("ledger"))
	}
	data := append(append([]byte(nil), gtrid...), bqual...)
	x, err := splitData(FormatID, int64(len(gtrid)), int64(len(bqual)), data)
	if err != nil {
		t.Fatal(err)
	}
	if got, tag := x.gid(); got != g || tag != tagOf("shop") || x.raw() != g.String() || !x.in(tagOf("shop")) || x.in(tagOf("ledger")) {
		t.Fatalf("round trip: %v %q %q", got, tag, x.raw())
	}
	if xs := XID(g, "shop"); !strings.HasPrefix(xs, "X'") || !strings.HasSuffix(xs, ",1954046769") || xs != x.sql() {
		t.Fatalf("xid %s, from the row %s", xs, x.sql())
	}
	hx, err := splitHexData(FormatID, int64(len(gtrid)), int64(len(bqual)), []byte("0x"+hexString(string(data))))
	if got, _ := hx.gid(); err != nil || got != g {
		t.Fatalf("CONVERT XID row: %v %v", got, err)
	}
	// A branch name that leaves no room for the tag goes without it, and
	// every database's Resource lists it.
	long, err := ids.NewGID("txc", "c1", id, strings.Repeat("b", ids.MaxBranchLen-4))
	if err != nil {
		t.Fatal(err)
	}
	if b := bqualIn(long.Branch, "shop"); b != long.Branch {
		t.Fatalf("long branch's bqual %q", b)
	}
	lx := recovered{format: FormatID, gtrid: []byte(long.GTRID()), bqual: []byte(long.Branch)}
	if got, tag := lx.gid(); got != long || tag != "" || !lx.in(tagOf("shop")) || !lx.in(tagOf("ledger")) {
		t.Fatalf("untagged: %v %q", got, tag)
	}
	// A tag that is not 8 hex digits makes the xid foreign.
	for _, b := range []string{g.Branch + "@12", g.Branch + "@zzzzzzzz", g.Branch + "@"} {
		if got, _ := (recovered{format: FormatID, gtrid: gtrid, bqual: []byte(b)}).gid(); !got.IsZero() {
			t.Errorf("bqual %q read as gid %v", b, got)
		}
	}
	for _, c := range []struct {
		name     string
		format   int64
		gl, bl   int64
		data     string
		wantErr  bool
		wantRaw  string
		wantZero bool
	}{
		{"another format id", 1, int64(len(gtrid)), int64(len(bqual)), string(data), false, xidSQL(gtrid, bqual, 1), true},
		{"parts that are no gid", FormatID, 3, 1, "abcd", false, "X'616263',X'64',1954046769", true},
		{"the gid cut elsewhere", FormatID, int64(len(gtrid)) + 1, int64(len(bqual)) - 1, string(data), false, "", true},
		{"lengths that do not add up", FormatID, 5, 5, "abc", true, "", true},
		{"a negative length", FormatID, -1, 4, "abc", true, "", true},
		{"a part over 64 bytes", FormatID, 65, 0, strings.Repeat("a", 65), true, "", true},
		{"binary parts", 7, 2, 1, "\x00\xff\x10", false, "X'00ff',X'10',7", true},
	} {
		x, err := splitData(c.format, c.gl, c.bl, []byte(c.data))
		if (err != nil) != c.wantErr {
			t.Errorf("%s: err %v", c.name, err)
			continue
		}
		if err != nil {
			continue
		}
		if got, _ := x.gid(); c.wantZero && !got.IsZero() {
			t.Errorf("%s: read as gid %v", c.name, got)
		}
		if c.wantRaw != "" && x.raw() != c.wantRaw {
			t.Errorf("%s: raw %q, want %q", c.name, x.raw(), c.wantRaw)
		}
	}
	for _, bad := range []string{"6162", "0xzz", ""} {
		if _, err := splitHexData(1, 1, 1, []byte(bad)); err == nil {
			t.Errorf("CONVERT XID data %q accepted", bad)
		}
	}
}
