package ids

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/uuid"
)

func mustTxID(t testing.TB) TxID {
	t.Helper()
	id, err := NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestGIDRoundTrip(t *testing.T) {
	id := mustTxID(t)
	g, err := NewGID("txc", "orders-1", id, "0")
	if err != nil {
		t.Fatal(err)
	}
	want := "txc.orders-1." + id.String() + ".0"
	if g.String() != want {
		t.Fatalf("gid %q, want %q", g, want)
	}
	back, err := ParseGID(g.String())
	if err != nil || back != g {
		t.Fatalf("parse %q: %+v %v", g, back, err)
	}
	if !back.Owned("txc", "orders-1") || back.Owned("txc", "orders-2") || back.Owned("xyz", "orders-1") {
		t.Fatal("ownership")
	}
}

func TestHostileGIDsAreRefused(t *testing.T) {
	id := mustTxID(t)
	hostile := []string{
		"a'; DROP TABLE accounts; --",
		"x' OR '1'='1",
		`back\slash`,
		"semi;colon",
		"space here",
		"new\nline",
		"nul\x00byte",
		"dot.ted",
		"ünïcode",
		"",
		strings.Repeat("a", 65),
	}
	for _, h := range hostile {
		for _, part := range []string{"prefix", "coordinator", "branch"} {
			p, c, b := "txc", "c1", "0"
			switch part {
			case "prefix":
				p = h
			case "coordinator":
				c = h
			default:
				b = h
			}
			if _, err := NewGID(p, c, id, b); !errors.Is(err, ErrBadGID) {
				t.Errorf("%s %q accepted (err %v)", part, h, err)
			}
		}
		if _, err := ParseGID("txc.c1." + id.String() + "." + h); err == nil {
			t.Errorf("ParseGID accepted branch %q", h)
		}
	}
}

func TestMalformedGIDStringsAreRefused(t *testing.T) {
	id := mustTxID(t)
	bad := []string{
		"",
		"txc",
		"txc.c1.0",
		"txc.c1." + id.String(),
		"txc.c1.not-a-uuid-at-all-but-36-chars-xx.0",
		"txc.c1." + strings.ToUpper(id.String()) + ".0",
		"txc.c1." + id.String() + ".0.extra",
		"txc.c1.00000000-0000-0000-0000-000000000000.0",
	}
	for _, s := range bad {
		if _, err := ParseGID(s); !errors.Is(err, ErrBadGID) {
			t.Errorf("ParseGID(%q) = %v, want ErrBadGID", s, err)
		}
	}
}

func TestTransactionPartFitsAnXAGtrid(t *testing.T) {
	id := mustTxID(t)
	// 3 + 1 + 23 + 1 + 36 = 64 bytes: the longest allowed.
	if _, err := NewGID("txc", strings.Repeat("c", 23), id, "0"); err != nil {
		t.Fatalf("64-byte transaction part refused: %v", err)
	}
	if _, err := NewGID("txc", strings.Repeat("c", 24), id, "0"); !errors.Is(err, ErrBadGID) {
		t.Fatalf("65-byte transaction part accepted: %v", err)
	}
}

func TestQuoteLiteralDoublesQuotes(t *testing.T) {
	if got := QuoteLiteral("it's"); got != "'it''s'" {
		t.Fatalf("got %s", got)
	}
}

func TestTxIDIsTimeOrderedAndParses(t *testing.T) {
	a, b := mustTxID(t), mustTxID(t)
	if a.Time().IsZero() || b.Time().Before(a.Time()) {
		t.Fatalf("times %v %v", a.Time(), b.Time())
	}
	back, err := ParseTxID(a.String())
	if err != nil || back != a {
		t.Fatalf("%v %v", back, err)
	}
	for _, s := range []string{"", "xyz", a.String()[:35], strings.Replace(a.String(), "-", "x", 1), "00000000-0000-0000-0000-000000000000"} {
		if _, err := ParseTxID(s); !errors.Is(err, ErrBadTxID) {
			t.Errorf("ParseTxID(%q) = %v", s, err)
		}
	}
}

// FuzzParseGID checks that any string either fails with ErrBadGID or
// parses to a gid that prints back as the same string and contains only
// the allowed bytes.
func FuzzParseGID(f *testing.F) {
	id, _ := NewTxID()
	f.Add("txc.c1." + id.String() + ".0")
	f.Add("txc.c1." + id.String() + ".x'--")
	f.Add("....")
	f.Fuzz(func(t *testing.T, s string) {
		g, err := ParseGID(s)
		if err != nil {
			if !errors.Is(err, ErrBadGID) {
				t.Fatalf("error %v does not wrap ErrBadGID", err)
			}
			return
		}
		if g.String() != s {
			t.Fatalf("parsed %q prints as %q", s, g)
		}
		for i := 0; i < len(s); i++ {
			c := s[i]
			if !(c == '.' || nameByte(c)) {
				t.Fatalf("accepted byte %q in %q", c, s)
			}
		}
	})
}

func TestHolderBranchRoundTrip(t *testing.T) {
	id := mustTxID(t)
	b, err := HolderBranch(1, "bank_a")
	if err != nil {
		t.Fatal(err)
	}
	g, err := NewGID("txc", "orders-1", id, b)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseGID(g.String())
	if err != nil {
		t.Fatal(err)
	}
	if h, ok := back.Holder(); !ok || h != "bank_a" {
		t.Fatalf("holder of %s: %q %v", back, h, ok)
	}
	long := strings.Repeat("x", MaxHolderLen)
	if b, err := HolderBranch(99999, long); err != nil {
		t.Fatalf("longest holder refused: %v", err)
	} else if _, err := NewGID("txc", "orders-1", id, b); err != nil {
		t.Fatalf("gid with the longest holder: %v", err)
	}
	if _, err := HolderBranch(0, long+"x"); !errors.Is(err, ErrBadGID) {
		t.Fatalf("a holder name too long for a branch: %v", err)
	}
	if _, err := HolderBranch(0, "bad.name"); !errors.Is(err, ErrBadGID) {
		t.Fatalf("a holder name with a dot: %v", err)
	}
}

func TestBranchesWithoutAHolderMarkNameNone(t *testing.T) {
	for _, b := range []string{"0", "12", "h-bank", "-h-bank", "1-h-", "1-x-bank", "orders-abcdef", "1h-bank"} {
		if h, ok := BranchHolder(b); ok {
			t.Errorf("branch %q names holder %q", b, h)
		}
	}
	for b, want := range map[string]string{"x1-h-bank": "bank", "orders-0a1b2c-h-bank_a": "bank_a", "3-h-a-h-b": "b"} {
		if h, ok := BranchHolder(b); !ok || h != want {
			t.Errorf("branch %q: holder %q %v, want %q (what follows the last mark)", b, h, ok, want)
		}
	}
	if _, err := MarkHolder("orders-0a1b", "a-h-b"); !errors.Is(err, ErrBadGID) {
		t.Errorf("a holder name containing the mark: %v", err)
	}
	if _, err := MarkHolder("x-h-y", "bank"); !errors.Is(err, ErrBadGID) {
		t.Errorf("a branch containing the mark: %v", err)
	}
	if _, err := MarkHolder(strings.Repeat("s", 60), "bank"); !errors.Is(err, ErrBadGID) {
		t.Errorf("a marked branch too long for a gid: %v", err)
	}
}

func TestTxIDStringIsTheCanonicalUUIDForm(t *testing.T) {
	for i := 0; i < 100; i++ {
		id := mustTxID(t)
		if got, want := id.String(), uuid.UUID(id).String(); got != want {
			t.Fatalf("%q, want %q", got, want)
		}
	}
}
