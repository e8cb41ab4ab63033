// Package ids holds the identifiers every layer shares: the global
// transaction id (TxID) and the gid that names one branch of a transaction
// at its database. It imports nothing of the project, so that the log, the
// participants and the coordinator can all depend on it.
package ids

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

var (
	// ErrBadGID reports a malformed gid or gid component.
	ErrBadGID = errors.New("ids: malformed gid")
	// ErrBadTxID reports a malformed transaction id.
	ErrBadTxID = errors.New("ids: malformed transaction id")
)

// MaxGTRIDLen is the longest transaction part (prefix.coordinator.txid) a
// gid may have, so that it also fits a MySQL XA gtrid.
const MaxGTRIDLen = 64

// MaxBranchLen is the longest branch qualifier, so that it fits a MySQL XA
// bqual.
const MaxBranchLen = 64

// DefaultPrefix is the gid prefix used when none is configured.
const DefaultPrefix = "txc"

// GID names one branch of a global transaction at its database:
// <prefix>.<coordinatorID>.<TxID>.<branch>. Only [A-Za-z0-9._-] appear in a
// valid gid, and prefix, coordinator id and branch contain no dot.
type GID struct {
	Prefix      string
	Coordinator string
	TxID        TxID
	Branch      string
}

// NewGID builds and validates a gid.
func NewGID(prefix, coordinator string, id TxID, branch string) (GID, error) {
	g := GID{Prefix: prefix, Coordinator: coordinator, TxID: id, Branch: branch}
	if err := g.Validate(); err != nil {
		return GID{}, err
	}
	return g, nil
}

// Validate checks every part of g.
func (g GID) Validate() error {
	if err := ValidateName("prefix", g.Prefix); err != nil {
		return err
	}
	if err := ValidateName("coordinator id", g.Coordinator); err != nil {
		return err
	}
	if g.TxID.IsZero() {
		return fmt.Errorf("%w: zero transaction id", ErrBadGID)
	}
	if err := ValidateName("branch", g.Branch); err != nil {
		return err
	}
	if n := g.gtridLen(); n > MaxGTRIDLen {
		return fmt.Errorf("%w: transaction part %q is %d bytes, at most %d allowed (shorten the prefix or coordinator id)", ErrBadGID, g.GTRID(), n, MaxGTRIDLen)
	}
	if len(g.Branch) > MaxBranchLen {
		return fmt.Errorf("%w: branch %q is longer than %d bytes", ErrBadGID, g.Branch, MaxBranchLen)
	}
	return nil
}

// ValidateName checks a gid component other than the transaction id: one to
// 64 characters of [A-Za-z0-9_-]. what names the component in the error.
func ValidateName(what, s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty %s", ErrBadGID, what)
	}
	if len(s) > 64 {
		return fmt.Errorf("%w: %s %q is longer than 64 bytes", ErrBadGID, what, s)
	}
	for i := 0; i < len(s); i++ {
		if !nameByte(s[i]) {
			return fmt.Errorf("%w: %s %q has byte %q at %d; only A-Z a-z 0-9 _ - are allowed", ErrBadGID, what, s, s[i], i)
		}
	}
	return nil
}

func nameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// GTRID returns the transaction part: <prefix>.<coordinatorID>.<TxID>.
func (g GID) GTRID() string {
	b := make([]byte, 0, g.gtridLen())
	return string(g.appendGTRID(b))
}

// txidLen is the length of a TxID's canonical form.
const txidLen = 36

func (g GID) gtridLen() int { return len(g.Prefix) + 1 + len(g.Coordinator) + 1 + txidLen }

func (g GID) appendGTRID(b []byte) []byte {
	b = append(b, g.Prefix...)
	b = append(b, '.')
	b = append(b, g.Coordinator...)
	b = append(b, '.')
	return g.TxID.appendText(b)
}

// String returns the full gid.
func (g GID) String() string {
	b := make([]byte, 0, g.gtridLen()+1+len(g.Branch))
	b = g.appendGTRID(b)
	b = append(b, '.')
	b = append(b, g.Branch...)
	return string(b)
}

// IsZero reports whether g is the zero value.
func (g GID) IsZero() bool { return g == GID{} }

// Owned reports whether g was issued by the coordinator with this prefix
// and id. Branches that are not owned are foreign and never touched
// automatically.
func (g GID) Owned(prefix, coordinator string) bool {
	return g.Prefix == prefix && g.Coordinator == coordinator
}

// ParseGID parses and validates a gid string. Strings from a database scan
// that are not ours fail with ErrBadGID; callers treat those as foreign.
func ParseGID(s string) (GID, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return GID{}, fmt.Errorf("%w: %q: want <prefix>.<coordinator>.<txid>.<branch>", ErrBadGID, s)
	}
	id, err := ParseTxID(parts[2])
	if err != nil {
		return GID{}, fmt.Errorf("%w: %q: %v", ErrBadGID, s, err)
	}
	g := GID{Prefix: parts[0], Coordinator: parts[1], TxID: id, Branch: parts[3]}
	if err := g.Validate(); err != nil {
		return GID{}, err
	}
	if g.String() != s {
		// Upper-case hex in the txid: not a gid we would have written.
		return GID{}, fmt.Errorf("%w: %q is not in canonical form", ErrBadGID, s)
	}
	return g, nil
}

// QuoteLiteral returns s as a SQL string literal ('...' with quotes
// doubled). It is used for statements such as PREPARE TRANSACTION that
// accept only a literal; callers validate s first.
func QuoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// holderMark separates a branch's own name from the name of the resource
// that holds its transaction's decision: <name>-h-<holder>.
const holderMark = "-h-"

// MaxHolderLen is the longest resource name that can be named as a
// decision holder: the branch part <n>-h-<holder> must fit MaxBranchLen
// with room for a branch number of up to five digits.
const MaxHolderLen = MaxBranchLen - len(holderMark) - 5

// HolderBranch returns the branch part of the n-th branch of a transaction
// whose commit decision is kept by the resource named holder (a decision
// holder): "<n>-h-<holder>". Recovery reads the holder back with
// GID.Holder, so that it finds the decision without the coordinator's log.
func HolderBranch(n int, holder string) (string, error) {
	if n < 0 {
		return "", fmt.Errorf("%w: negative branch number %d", ErrBadGID, n)
	}
	return MarkHolder(strconv.Itoa(n), holder)
}

// MarkHolder returns branch with the decision holder's mark appended:
// "<branch>-h-<holder>". branch must not contain the mark itself, nor
// holder, which must be a valid resource name of at most MaxHolderLen
// bytes.
func MarkHolder(branch, holder string) (string, error) {
	if err := ValidateHolderName(holder); err != nil {
		return "", err
	}
	if branch == "" || strings.Contains(branch, holderMark) {
		return "", fmt.Errorf("%w: branch %q cannot carry a decision holder's mark (it is empty or contains %q)", ErrBadGID, branch, holderMark)
	}
	b := branch + holderMark + holder
	if err := ValidateName("branch", b); err != nil {
		return "", fmt.Errorf("%w (branch %q with decision holder %q)", err, branch, holder)
	}
	return b, nil
}

// ValidateHolderName checks the name of a resource that is to hold
// decisions: a valid name, at most MaxHolderLen bytes, without the mark
// "-h-".
func ValidateHolderName(holder string) error {
	if err := ValidateName("decision holder", holder); err != nil {
		return err
	}
	if len(holder) > MaxHolderLen {
		return fmt.Errorf("%w: decision holder %q is longer than %d bytes", ErrBadGID, holder, MaxHolderLen)
	}
	if strings.Contains(holder, holderMark) {
		return fmt.Errorf("%w: decision holder %q contains %q, which marks a holder in a gid", ErrBadGID, holder, holderMark)
	}
	return nil
}

// Holder returns the resource that holds the decision of g's transaction,
// if g's branch part names one (see MarkHolder).
func (g GID) Holder() (string, bool) {
	return BranchHolder(g.Branch)
}

// BranchHolder is GID.Holder for a branch part alone: what follows the
// last "-h-", when something precedes it.
func BranchHolder(branch string) (string, bool) {
	i := strings.LastIndex(branch, holderMark)
	if i <= 0 {
		return "", false
	}
	h := branch[i+len(holderMark):]
	if ValidateHolderName(h) != nil {
		return "", false
	}
	return h, true
}

// ValidateOwner checks an owner, the part of a gid that names the
// coordinator that issued it: "<prefix>.<coordinator id>".
func ValidateOwner(owner string) error {
	prefix, id, ok := strings.Cut(owner, ".")
	if !ok {
		return fmt.Errorf("%w: owner %q: want <prefix>.<coordinator id>", ErrBadGID, owner)
	}
	if err := ValidateName("prefix", prefix); err != nil {
		return err
	}
	return ValidateName("coordinator id", id)
}
