package pgtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
)

// EnvBin is the environment variable naming the directory that holds the
// PostgreSQL server binaries (initdb, postgres). It takes precedence over
// PATH and /usr/lib/postgresql/*/bin.
const EnvBin = "TXCOORD_PG_BIN"

// debianGlob matches the per-version binary directories of Debian and
// Ubuntu packages.
const debianGlob = "/usr/lib/postgresql/*/bin"

// Binaries returns the directory holding initdb and postgres: the one named
// by TXCOORD_PG_BIN if set, else the directory of initdb on PATH, else the
// highest version under /usr/lib/postgresql/*/bin. It returns an error
// wrapping ErrNoBinaries if none has both programs.
func Binaries() (dir string, err error) {
	if d := os.Getenv(EnvBin); d != "" {
		if hasServer(d) {
			return d, nil
		}
		return "", &binError{msg: "pgtest: " + EnvBin + "=" + d + " does not hold both initdb and postgres"}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if d := filepath.Dir(p); hasServer(d) {
			return d, nil
		}
		// Some distributions put a wrapper or a symlink on PATH; the server
		// sits next to the real file.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			if d := filepath.Dir(real); hasServer(d) {
				return d, nil
			}
		}
	}
	dirs, _ := filepath.Glob(debianGlob)
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if hasServer(d) {
			return d, nil
		}
	}
	return "", ErrNoBinaries
}

// binError is a binaries lookup failure that is also ErrNoBinaries.
type binError struct{ msg string }

func (e *binError) Error() string        { return e.msg }
func (e *binError) Is(target error) bool { return target == ErrNoBinaries }

// versionOf returns the major version in /usr/lib/postgresql/<v>/bin, or -1.
func versionOf(dir string) float64 {
	v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
	if err != nil {
		return -1
	}
	return v
}

func hasServer(dir string) bool {
	return isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "postgres"))
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
