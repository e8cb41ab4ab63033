package ids

import (
	"encoding/hex"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// TxID identifies one global transaction. It is a UUIDv7: unique across
// restarts and ordered by creation time. The zero TxID is invalid.
type TxID [16]byte

// NewTxID returns a fresh time-ordered transaction id.
func NewTxID() (TxID, error) {
	u, err := uuid.NewV7()
	if err != nil {
		return TxID{}, fmt.Errorf("participant: new transaction id: %w", err)
	}
	return TxID(u), nil
}

// ParseTxID parses the canonical 36-character form
// (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, lower or upper case hex).
func ParseTxID(s string) (TxID, error) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return TxID{}, fmt.Errorf("%w: %q: want 36 characters like 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", ErrBadTxID, s)
	}
	var id TxID
	hexPart := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	if _, err := hex.Decode(id[:], []byte(hexPart)); err != nil {
		return TxID{}, fmt.Errorf("%w: %q: %v", ErrBadTxID, s, err)
	}
	if id.IsZero() {
		return TxID{}, fmt.Errorf("%w: %q is the zero id", ErrBadTxID, s)
	}
	return id, nil
}

// IsZero reports whether id is the invalid zero value.
func (id TxID) IsZero() bool { return id == TxID{} }

// String returns the canonical lower-case 36-character form.
func (id TxID) String() string { return string(id.appendText(make([]byte, 0, txidLen))) }

// appendText appends the canonical form to b.
func (id TxID) appendText(b []byte) []byte {
	var buf [txidLen]byte
	hex.Encode(buf[0:8], id[0:4])
	buf[8] = '-'
	hex.Encode(buf[9:13], id[4:6])
	buf[13] = '-'
	hex.Encode(buf[14:18], id[6:8])
	buf[18] = '-'
	hex.Encode(buf[19:23], id[8:10])
	buf[23] = '-'
	hex.Encode(buf[24:], id[10:])
	return append(b, buf[:]...)
}

// Time returns the creation time embedded in a UUIDv7 id, or the zero time
// if id is not a version 7 UUID.
func (id TxID) Time() time.Time {
	if id[6]>>4 != 7 {
		return time.Time{}
	}
	ms := int64(id[0])<<40 | int64(id[1])<<32 | int64(id[2])<<24 | int64(id[3])<<16 | int64(id[4])<<8 | int64(id[5])
	return time.UnixMilli(ms)
}

// MarshalText implements encoding.TextMarshaler.
func (id TxID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *TxID) UnmarshalText(b []byte) error {
	v, err := ParseTxID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}
