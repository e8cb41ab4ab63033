package dsn

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/lib/pq"
)

// Every DSN form below carries a password with "cret" in it; none of what
// is shown may.
var forms = []string{
	"postgres://txc:S3cret@db1:5432/ledger?sslmode=disable",
	"postgresql://txc:S3cret@db1/ledger",
	"postgres://db1/ledger?user=txc&password=S3cret",
	"postgres://db1/ledger?sslmode=disable&password=S3cret&user=txc",
	"postgres://txc:S3cr%t@db1/ledger",       // an invalid escape: url.Parse quotes the whole URL
	"postgres://txc:S3%40cret@db1/ledger",    // an escaped '@'
	"postgres://txc:S3@cret@db1/ledger",      // an unescaped '@'
	"postgres://txc:S3cr%20et%3A@db1/ledger", // escaped space and colon
	"host=db1 user=txc password=S3cret dbname=ledger",
	"host=db1 user=txc password = S3cret dbname=ledger",
	"host=db1 user=txc password='S3 cret' dbname=ledger",
	"host=db1 user=txc password='S3\\'cret x' dbname=ledger",
	"host=db1 user=txc PASSWORD=S3cret",
	"password=S3cret",
	"host=db1 password='S3 cret", // unterminated quote
	"mysql://txc:S3cret@db1:3306/ledger",
	"mariadb://txc:S3@cret@db1/ledger",
	"txc:S3cret@tcp(db1:3306)/ledger?parseTime=true",
	"txc:S3@cret@tcp(db1)/ledger",
	"txc:S3cret@unix(/run/mysqld/mysqld.sock)/ledger",
}

// isMySQLForm reports a MariaDB/MySQL DSN, which the PostgreSQL drivers
// are never given.
func isMySQLForm(d string) bool {
	return strings.HasPrefix(d, "mysql://") || strings.HasPrefix(d, "mariadb://") || strings.Contains(d, "@tcp(") || strings.Contains(d, "@unix(")
}

func leaks(s string) bool {
	return strings.Contains(s, "cret") || strings.Contains(s, "cr%") || strings.Contains(s, "cr et")
}

func TestRedactHidesEveryForm(t *testing.T) {
	for _, d := range forms {
		if got := Redact(d); leaks(got) || !strings.Contains(got, mask) {
			t.Errorf("Redact(%q) = %q", d, got)
		}
	}
	for in, want := range map[string]string{
		"postgres://app:s3@db:5432/x?sslmode=disable": "postgres://app:xxxxx@db:5432/x?sslmode=disable",
		"host=db user=app password=s3 dbname=x":       "host=db user=app password=xxxxx dbname=x",
		"postgres://app@db/x":                         "postgres://app@db/x",
		"host=db dbname=x":                            "host=db dbname=x",
		"app:s3@tcp(db:3306)/x":                       "app:xxxxx@tcp(db:3306)/x",
		"app@tcp(db:3306)/x":                          "app@tcp(db:3306)/x",
		"mysql://app:s3@db/x":                         "mysql://app:xxxxx@db/x",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// The errors the drivers and net/url make of each form, and a message
// that quotes the DSN whole, are scrubbed; errors.Is still works.
func TestScrubHidesEveryFormInEveryError(t *testing.T) {
	sentinel := errors.New("sentinel")
	for _, d := range forms {
		var errs []error
		if isMySQLForm(d) {
			if _, err := gomysql.ParseDSN(d); err != nil {
				errs = append(errs, err)
			}
		} else {
			if _, err := pq.NewConfig(d); err != nil {
				errs = append(errs, err)
			}
			if _, err := pgx.ParseConfig(d); err != nil {
				errs = append(errs, err)
			}
		}
		if _, err := url.Parse(d); err != nil {
			errs = append(errs, err)
		}
		errs = append(errs, fmt.Errorf("open %q: %w", d, sentinel), fmt.Errorf("open %s: %w", d, sentinel))
		for _, err := range errs {
			got := Scrub(fmt.Errorf("resource x: %w", err), d)
			if leaks(got.Error()) {
				t.Errorf("Scrub of %q's error leaks: %v", d, got)
			}
			if errors.Is(err, sentinel) && !errors.Is(got, sentinel) {
				t.Errorf("Scrub lost the wrapped error of %q", d)
			}
		}
	}
	if Scrub(nil, "x") != nil {
		t.Error("Scrub(nil) is not nil")
	}
	plain := errors.New("connection refused")
	if Scrub(plain, forms[0]) != plain {
		t.Error("an error with nothing to scrub is not returned as is")
	}
}

func TestResolveReadsAFileOrTheEnvironment(t *testing.T) {
	file := filepath.Join(t.TempDir(), "dsn")
	if err := os.WriteFile(file, []byte("  host=db1 password=S3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TXCOORD_TEST_DSN", "postgres://txc:S3cret@db1/ledger")
	for spec, want := range map[string]string{
		"@" + file:             "host=db1 password=S3cret",
		"env:TXCOORD_TEST_DSN": "postgres://txc:S3cret@db1/ledger",
		"host=db1 dbname=x":    "host=db1 dbname=x",
		"postgres://txc@db1/x": "postgres://txc@db1/x",
	} {
		if got, err := Resolve(spec); err != nil || got != want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", spec, got, err, want)
		}
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, spec := range []string{"@" + filepath.Join(t.TempDir(), "missing"), "@" + empty, "env:TXCOORD_TEST_UNSET"} {
		if _, err := Resolve(spec); err == nil {
			t.Errorf("Resolve(%q) accepted", spec)
		}
	}
	for spec, want := range map[string]bool{
		"@" + file: false, "env:X": false, "host=db1 dbname=x": false,
		"host=db1 password=S3cret": true, "postgres://txc:S3cret@db1/x": true,
	} {
		if got := Literal(spec); got != want {
			t.Errorf("Literal(%q) = %v", spec, got)
		}
	}
}
