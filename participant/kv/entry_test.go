package kv

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"testing"
	"time"
)

func TestEntryRoundTrip(t *testing.T) {
	e := entry{
		since: time.Unix(0, 1740830400123456789),
		ops: []op{
			{kind: opPut, key: "b", version: 7, value: []byte("hello")},
			{kind: opRead, key: "a", version: 3},
			{kind: opDelete, key: "c", version: 0},
			{kind: opPut, key: "d", version: 0, value: []byte{}},
		},
	}
	got, err := decodeEntry(e.encode())
	if err != nil {
		t.Fatal(err)
	}
	if !got.since.Equal(e.since) || !reflect.DeepEqual(got.ops, e.ops) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, e)
	}
}

func TestEntryEveryFlippedBitIsCorrupt(t *testing.T) {
	e := entry{since: time.Unix(1, 0), ops: []op{{kind: opPut, key: "k", version: 1, value: []byte("v")}}}
	b := e.encode()
	for i := range len(b) * 8 {
		c := append([]byte{}, b...)
		c[i/8] ^= 1 << (i % 8)
		if _, err := decodeEntry(c); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("bit %d flipped: err = %v; want ErrCorrupt", i, err)
		}
	}
	for n := range len(b) {
		if _, err := decodeEntry(b[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d bytes: err = %v; want ErrCorrupt", n, err)
		}
	}
}

// FuzzDecodeEntry feeds the decoder arbitrary bytes, once as they are and
// once behind a valid checksum so that the parser past it is reached.
func FuzzDecodeEntry(f *testing.F) {
	f.Add((&entry{since: time.Unix(5, 0), ops: []op{{kind: opPut, key: "k", value: []byte("v")}}}).encode()[4:])
	f.Add((&entry{ops: []op{{kind: opRead, key: "a", version: 9}, {kind: opDelete, key: "b"}}}).encode()[4:])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		sum := binary.BigEndian.AppendUint32(nil, crc32.Checksum(body, castagnoli))
		for _, b := range [][]byte{body, append(sum, body...)} {
			e, err := decodeEntry(b)
			if err != nil {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("error %v does not wrap ErrCorrupt", err)
				}
				continue
			}
			again, err := decodeEntry(e.encode())
			if err != nil {
				t.Fatalf("re-encoded entry does not decode: %v", err)
			}
			if !again.since.Equal(e.since) || len(again.ops) != len(e.ops) {
				t.Fatalf("re-encoded entry differs: %+v vs %+v", again, e)
			}
		}
	})
}
