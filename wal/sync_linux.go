//go:build linux

package wal

import (
	"os"

	"golang.org/x/sys/unix"
)

// fdatasync flushes f's data, and of its metadata only what reading the
// data back needs (the journal never changes its size).
func fdatasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}
