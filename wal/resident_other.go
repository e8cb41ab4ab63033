//go:build !linux

package wal

// dropResident leaves the pages read at open mapped (Linux alone drops
// them).
func (b *Bolt) dropResident() {}
