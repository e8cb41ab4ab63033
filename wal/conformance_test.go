package wal_test

import (
	"path/filepath"
	"testing"

	"github.com/txcoord/txcoord/wal"
	"github.com/txcoord/txcoord/wal/waltest"
)

func TestConformanceMem(t *testing.T) {
	waltest.Run(t, func(t *testing.T) wal.Log {
		m := wal.NewMem()
		t.Cleanup(func() { _ = m.Close() })
		return m
	})
}

func TestConformanceBolt(t *testing.T) {
	waltest.Run(t, func(t *testing.T) wal.Log {
		l, err := wal.OpenBolt(filepath.Join(t.TempDir(), "wal.db"), wal.BoltOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		return l
	})
}
