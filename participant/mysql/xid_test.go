package mysql

import (
	"strings"
	"testing"

	"github.com/txcoord/txcoord/ids"
)

// A gid maps onto an xid and back; XA RECOVER's rows, raw or in hex, are
// cut by the lengths the server reports, and anything else is foreign.
func TestXIDRoundTripAndRecoverRows(t *testing.T) {
	id, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	g, err := ids.NewGID("txc", "c1", id, "bank_a-h-ledger")
	if err != nil {
		t.Fatal(err)
	}
	gtrid, bqual := []byte(g.GTRID()), []byte(g.Branch)
	data := append(append([]byte(nil), gtrid...), bqual...)
	x, err := splitData(FormatID, int64(len(gtrid)), int64(len(bqual)), data)
	if err != nil {
		t.Fatal(err)
	}
	if x.gid() != g || x.raw() != g.String() {
		t.Fatalf("round trip: %v %q", x.gid(), x.raw())
	}
	if !strings.HasPrefix(xid(g), "X'") || !strings.HasSuffix(xid(g), ",1954046769") {
		t.Fatalf("xid %s", xid(g))
	}
	hx, err := splitHexData(FormatID, int64(len(gtrid)), int64(len(bqual)), []byte("0x"+hexString(string(data))))
	if err != nil || hx.gid() != g {
		t.Fatalf("CONVERT XID row: %v %v", hx.gid(), err)
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
		if c.wantZero && !x.gid().IsZero() {
			t.Errorf("%s: read as gid %v", c.name, x.gid())
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
