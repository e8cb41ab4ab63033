package mysql

import (
	"encoding/hex"
	"fmt"
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
// limits, so a gid maps onto an xid and back without loss.

// xid returns gid's xid as SQL: two hex literals and the format id, which
// need no quoting and survive any connection character set.
func xid(g ids.GID) string {
	return xidSQL([]byte(g.GTRID()), []byte(g.Branch), FormatID)
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

// gid returns the gid this xid names, or a zero GID when it is not one of
// any txcoord's: another format id, or parts that do not parse.
func (x recovered) gid() ids.GID {
	if x.format != FormatID {
		return ids.GID{}
	}
	g, err := ids.ParseGID(string(x.gtrid) + "." + string(x.bqual))
	if err != nil || g.GTRID() != string(x.gtrid) || g.Branch != string(x.bqual) {
		return ids.GID{}
	}
	return g
}

// raw is how a scan reports the xid: the gid for one of ours, else the
// xid as SQL, which an operator can paste into XA COMMIT or XA ROLLBACK.
func (x recovered) raw() string {
	if g := x.gid(); !g.IsZero() {
		return g.String()
	}
	return xidSQL(x.gtrid, x.bqual, x.format)
}
