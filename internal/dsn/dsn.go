// Package dsn keeps the passwords of PostgreSQL connection strings out of
// what txcoord shows: Redact gives a DSN's display form, Scrub an error
// that may quote it. Both handle the URL form (a password in the userinfo
// or in the query, escaped or not, parseable or not) and the key=value
// form (spaces around '=', quoted values with spaces and escapes).
package dsn

import (
	"fmt"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// mask replaces a password.
const mask = "xxxxx"

// kvPassword matches a password in a key=value DSN: the key, '=' with
// optional spaces, and a quoted or bare value.
var kvPassword = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)`)

// queryPassword matches a password parameter in a URL's query.
var queryPassword = regexp.MustCompile(`(?i)([?&]password=)([^&#]*)`)

// isURL reports whether dsn is in the URL form.
func isURL(dsn string) bool {
	l := strings.ToLower(dsn)
	for _, scheme := range []string{"postgres://", "postgresql://", "mysql://", "mariadb://"} {
		if strings.HasPrefix(l, scheme) {
			return true
		}
	}
	return false
}

// driverPassword matches the password in go-sql-driver/mysql's form,
// user:password@protocol(address)/dbname: the password runs to the last
// '@' before the protocol.
var driverPassword = regexp.MustCompile(`^([^:@/]*:)(.*)@(tcp|tcp4|tcp6|unix)?\(`)

// Redact returns dsn with every password replaced by "xxxxx".
func Redact(dsn string) string {
	if m := driverPassword.FindStringSubmatchIndex(dsn); m != nil && !isURL(dsn) {
		return dsn[:m[3]] + mask + dsn[m[5]:]
	}
	if !isURL(dsn) {
		return kvPassword.ReplaceAllString(dsn, "${1}"+mask)
	}
	out := queryPassword.ReplaceAllString(dsn, "${1}"+mask)
	scheme := strings.Index(out, "://") + 3
	rest := out[scheme:]
	// The userinfo ends at the last '@' before the path; a password may
	// hold '@' itself when it is not escaped.
	end := len(rest)
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		end = i
	}
	if at := strings.LastIndex(rest[:end], "@"); at >= 0 {
		if colon := strings.Index(rest[:at], ":"); colon >= 0 {
			rest = rest[:colon+1] + mask + rest[at:]
		}
	}
	return out[:scheme] + rest
}

// Passwords returns the forms in which dsn's passwords may appear in a
// message: as written, unquoted, unescaped and escaped, longest first.
func Passwords(dsn string) []string {
	var raw []string
	if m := driverPassword.FindStringSubmatch(dsn); m != nil && !isURL(dsn) {
		raw = append(raw, m[2])
	} else if isURL(dsn) {
		for _, m := range queryPassword.FindAllStringSubmatch(dsn, -1) {
			raw = append(raw, m[2])
		}
		rest := dsn[strings.Index(dsn, "://")+3:]
		end := len(rest)
		if i := strings.IndexAny(rest, "/?#"); i >= 0 {
			end = i
		}
		if at := strings.LastIndex(rest[:end], "@"); at >= 0 {
			if colon := strings.Index(rest[:at], ":"); colon >= 0 {
				raw = append(raw, rest[colon+1:at])
			}
		}
	} else {
		for _, m := range kvPassword.FindAllStringSubmatch(dsn, -1) {
			raw = append(raw, m[2])
			if v := strings.Trim(m[2], "'"); v != m[2] {
				raw = append(raw, v, strings.ReplaceAll(strings.ReplaceAll(v, `\'`, `'`), `\\`, `\`))
			}
		}
	}
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if len(s) >= 2 && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, p := range raw {
		add(p)
		// A quoted password with spaces may be cut at a space by a
		// parser's own redaction: every word goes too.
		for _, w := range strings.Fields(strings.Trim(p, "'")) {
			if len(w) >= 3 {
				add(w)
			}
		}
		add(quoteInner(p))
		if u, err := url.PathUnescape(p); err == nil {
			add(u)
		}
		if u, err := url.QueryUnescape(p); err == nil {
			add(u)
		}
		add(url.PathEscape(p))
		add(url.QueryEscape(p))
		add(url.UserPassword("u", p).String()[2:])
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// Scrub returns err with every form of dsn's passwords (Passwords) and
// the raw DSN itself replaced in its message. errors.Is and errors.As
// still see the errors it wraps; only the message changes. A nil err
// gives nil.
func Scrub(err error, dsn string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	clean := strings.ReplaceAll(msg, dsn, Redact(dsn))
	clean = strings.ReplaceAll(clean, quoteInner(dsn), quoteInner(Redact(dsn)))
	for _, p := range Passwords(dsn) {
		clean = strings.ReplaceAll(clean, p, mask)
	}
	if clean == msg {
		return err
	}
	return &scrubbed{msg: clean, err: err}
}

// quoteInner is s as %q writes it, without the quotes.
func quoteInner(s string) string {
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

type scrubbed struct {
	msg string
	err error
}

func (e *scrubbed) Error() string { return e.msg }
func (e *scrubbed) Unwrap() error { return e.err }

// Resolve returns the DSN a configuration value names: "@/path" is read
// from that file (surrounding whitespace trimmed), "env:NAME" from that
// environment variable; anything else is the DSN itself. Neither form puts
// the password on the command line, where ps shows it.
func Resolve(spec string) (string, error) {
	switch {
	case strings.HasPrefix(spec, "@"):
		b, err := os.ReadFile(spec[1:])
		if err != nil {
			return "", fmt.Errorf("read the DSN from %s: %w", spec[1:], err)
		}
		d := strings.TrimSpace(string(b))
		if d == "" {
			return "", fmt.Errorf("the DSN file %s is empty", spec[1:])
		}
		return d, nil
	case strings.HasPrefix(spec, "env:"):
		d := strings.TrimSpace(os.Getenv(spec[4:]))
		if d == "" {
			return "", fmt.Errorf("the environment variable %s that should hold the DSN is unset or empty", spec[4:])
		}
		return d, nil
	}
	return spec, nil
}

// Literal reports whether spec is a DSN written in place (not "@file" or
// "env:NAME") that carries a password.
func Literal(spec string) bool {
	return !strings.HasPrefix(spec, "@") && !strings.HasPrefix(spec, "env:") && len(Passwords(spec)) > 0
}
