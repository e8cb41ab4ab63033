//go:build race

package torture

// raceEnabled: the test runs with the race detector, and so do the
// processes it builds.
const raceEnabled = true
