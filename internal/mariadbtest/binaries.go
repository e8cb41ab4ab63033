package mariadbtest

import (
	"os"
	"os/exec"
	"path/filepath"
)

// EnvBin is the environment variable naming a directory that holds the
// MariaDB server programs (mariadbd and mariadb-install-db, or the older
// names mysqld and mysql_install_db). It takes precedence over PATH,
// /usr/sbin and /usr/bin.
const EnvBin = "TXCOORD_MARIADB_BIN"

// binaries is where the two programs are.
type binaries struct {
	server  string // mariadbd
	install string // mariadb-install-db
	basedir string // --basedir for mariadb-install-db, "" for the default
}

var (
	serverNames  = []string{"mariadbd", "mysqld"}
	installNames = []string{"mariadb-install-db", "mysql_install_db"}
)

// findBinaries looks in EnvBin (and the bin, sbin and scripts directories
// beside it, as a tarball lays them out), else on PATH, /usr/sbin and
// /usr/bin. A mysqld that is Oracle's MySQL has no mariadb-install-db
// beside it and is not found.
func findBinaries() (binaries, error) {
	if d := os.Getenv(EnvBin); d != "" {
		dirs := []string{d, filepath.Join(d, "..", "bin"), filepath.Join(d, "..", "sbin"), filepath.Join(d, "..", "scripts")}
		b := binaries{server: lookIn(dirs, serverNames), install: lookIn(dirs, installNames), basedir: filepath.Clean(filepath.Join(d, ".."))}
		if b.server == "" || b.install == "" {
			return binaries{}, &binError{msg: "mariadbtest: " + EnvBin + "=" + d + " does not hold both mariadbd and mariadb-install-db"}
		}
		return b, nil
	}
	var b binaries
	for _, n := range serverNames {
		if p, err := exec.LookPath(n); err == nil {
			b.server = p
			break
		}
	}
	if b.server == "" {
		b.server = lookIn([]string{"/usr/sbin", "/usr/local/sbin"}, serverNames)
	}
	for _, n := range installNames {
		if p, err := exec.LookPath(n); err == nil {
			b.install = p
			break
		}
	}
	if b.install == "" {
		b.install = lookIn([]string{"/usr/bin", "/usr/local/bin"}, installNames)
	}
	if b.server == "" || b.install == "" {
		return binaries{}, ErrNoBinaries
	}
	return b, nil
}

func lookIn(dirs, names []string) string {
	for _, n := range names {
		for _, d := range dirs {
			p := filepath.Join(d, n)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
				return p
			}
		}
	}
	return ""
}

// binError is a lookup failure that is also ErrNoBinaries.
type binError struct{ msg string }

func (e *binError) Error() string        { return e.msg }
func (e *binError) Is(target error) bool { return target == ErrNoBinaries }

// Available returns nil when the server programs are found, else an error
// wrapping ErrNoBinaries that says what to install.
func Available() error {
	_, err := findBinaries()
	return err
}
