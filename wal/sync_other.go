//go:build !linux

package wal

import "os"

// fdatasync is a full sync where fdatasync(2) is not at hand.
func fdatasync(f *os.File) error { return f.Sync() }
