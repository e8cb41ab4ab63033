package wal

import (
	"errors"
	"path/filepath"
	"testing"
)

func TestLogKeepsItsOwnerAndRefusesAnother(t *testing.T) {
	path := filepath.Join(t.TempDir(), "owned.wal")
	b, err := OpenBolt(path, BoltOptions{Owner: "txc.orders-1"})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := OpenBolt(path, BoltOptions{Owner: "txc.orders-2"}); !errors.Is(err, ErrWrongOwner) {
		t.Fatalf("open by another owner: %v, want ErrWrongOwner", err)
	}
	b, err = OpenBolt(path, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Owner() != "txc.orders-1" {
		t.Fatalf("owner %q", b.Owner())
	}
}
