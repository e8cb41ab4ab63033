package mysql

import (
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/txcoord/txcoord/ids"
)

// FormatID is the XA format id of every xid txcoord writes ("txc1" in
// ASCII). It fits the 4 bytes MariaDB allows with the binary log on. An xid
// with another format id is foreign and never touched.
const FormatID = 0x74786331

// An xid is the gid cut at its last dot: gtrid is the transaction part
// <prefix>.<coordinator>.<txid> (at most ids.MaxGTRIDLen = 64 bytes) and
// bqual the branch (at most ids.MaxBranchLen = 64 bytes), both within XA's
// limits, so a gid maps onto an xid and back without loss. The bqual also
// carries the database's tag, "@" and 8 hex digits, where it fits in 64
// bytes: XA RECOVER lists the xids of every database on the server and
// an xid names none, so the tag is how a Resource tells its own branches
// from those of another database on the same server ('@' is not in a
// gid's alphabet, so the cut is unambiguous).

// tagOf returns database's tag: "@" and the FNV-1a hash of its name in hex.
func tagOf(database string) string {
	h := fnv.New32a()
	h.Write([]byte(database))
	return "@" + hex.EncodeToString(h.Sum(nil))
}

// bqualIn returns the bqual of branch in database: the branch and the
// database's tag, or the branch alone where both do not fit.
func bqualIn(branch, database string) string {
	if b := branch + tagOf(database); len(b) <= ids.MaxBranchLen {
		return b
	}
	return branch
}

// XID returns the xid of gid's branch in database as XA statements take
// it: two hex literals and the format id, which need no quoting and
// survive any connection character set.
func XID(gid ids.GID, database string) string {
	return xidSQL([]byte(gid.GTRID()), []byte(bqualIn(gid.Branch, database)), FormatID)
}

// xidSQL writes an xid the way XA statements take it.
func xidSQL(gtrid, bqual []byte, format int64) string {
	var sb strings.Builder
	sb.Grow(2*len(gtrid) + 2*len(bqual) + 20)
	sb.WriteString("X'")
	sb.WriteString(hex.EncodeToString(gtrid))
	sb.WriteString("',X'")
	sb.WriteString(hex.EncodeToString(bqual))
	sb.WriteString("',")
	sb.WriteString(strconv.FormatInt(format, 10))
	return sb.String()
}

// recovered is one row of XA RECOVER.
type recovered struct {
	format       int64
	gtrid, bqual []byte
}

// splitData cuts XA RECOVER's data column (gtrid then bqual, raw bytes) by
// the lengths the server reports with it.
func splitData(format, gtridLen, bqualLen int64, data []byte) (recovered, error) {
	if gtridLen < 0 || bqualLen < 0 || gtridLen > 64 || bqualLen > 64 || int64(len(data)) != gtridLen+bqualLen {
		return recovered{}, fmt.Errorf("mysql: XA RECOVER row with gtrid_length %d and bqual_length %d has %d bytes of data", gtridLen, bqualLen, len(data))
	}
	return recovered{format: format, gtrid: data[:gtridLen], bqual: data[gtridLen:]}, nil
}

// splitHexData is splitData for XA RECOVER CONVERT XID (MySQL), whose data
// column is 0x followed by the hex of gtrid then bqual.
func splitHexData(format, gtridLen, bqualLen int64, data []byte) (recovered, error) {
	s := string(data)
	if !strings.HasPrefix(s, "0x") && !strings.HasPrefix(s, "0X") {
		return recovered{}, fmt.Errorf("mysql: XA RECOVER CONVERT XID row has data %q, not 0x and hex", s)
	}
	raw, err := hex.DecodeString(s[2:])
	if err != nil {
		return recovered{}, fmt.Errorf("mysql: XA RECOVER CONVERT XID row has data %q: %w", s, err)
	}
	return splitData(format, gtridLen, bqualLen, raw)
}

// gid returns the gid this xid names and the database tag its bqual
// carries ("" for none), or a zero GID when it is not one of any
// txcoord's: another format id, or parts that do not parse.
func (x recovered) gid() (ids.GID, string) {
	if x.format != FormatID {
		return ids.GID{}, ""
	}
	branch, tag := string(x.bqual), ""
	if i := strings.LastIndexByte(branch, '@'); i >= 0 {
		branch, tag = branch[:i], branch[i:]
		if _, err := hex.DecodeString(tag[1:]); err != nil || len(tag) != 9 {
			return ids.GID{}, ""
		}
	}
	g, err := ids.ParseGID(string(x.gtrid) + "." + branch)
	if err != nil || g.GTRID() != string(x.gtrid) || g.Branch != branch {
		return ids.GID{}, ""
	}
	return g, tag
}

// in reports whether x may be a branch in the database whose tag is tag:
// it carries that tag, or none (a branch whose name left no room for one).
func (x recovered) in(tag string) bool {
	_, t := x.gid()
	return t == "" || t == tag
}

// sql is the xid as SQL, as XA COMMIT and XA ROLLBACK take it.
func (x recovered) sql() string { return xidSQL(x.gtrid, x.bqual, x.format) }

// raw is how a scan reports the xid: the gid for one of ours, else the
// xid as SQL, which an operator can paste into XA COMMIT or XA ROLLBACK.
func (x recovered) raw() string {
	if g, _ := x.gid(); !g.IsZero() {
		return g.String()
	}
	return x.sql()
}
