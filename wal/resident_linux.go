//go:build linux

package wal

import (
	"os"

	"golang.org/x/sys/unix"
)

// dropResident tells the kernel that the process no longer needs the pages
// of the log file that opening read through bbolt's read-only mmap: they
// stay in the page cache, but leave the process's resident memory (a log
// holding 1,000,000 ended decisions is a 256 MiB file, read whole at open
// to check every record). A page read later is mapped again on demand. It
// runs while nothing else uses the log, before bbolt can remap the file.
func (b *Bolt) dropResident() {
	fi, err := os.Stat(b.path)
	if err != nil {
		return
	}
	n := fi.Size() &^ (int64(os.Getpagesize()) - 1)
	if n <= 0 {
		return
	}
	// The mapping is at least as long as the file; an error leaves the
	// pages where they are, which costs memory and nothing else.
	_, _, _ = unix.Syscall(unix.SYS_MADVISE, b.db.Info().Data, uintptr(n), unix.MADV_DONTNEED)
}
