package wal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"strings"
	"testing"
	"time"
)

func codecSamples(t testing.TB) []Record {
	commit := commitRec(t, testID(1), "pg-a", "pg-b", "kv")
	commit.Epoch = 7
	abort := Record{Kind: KindAbort, TxID: testID(2), Time: time.Unix(0, 1).UTC(), Epoch: 1<<63 + 5,
		Heuristic: true, Who: "alice@ops", Why: "branch pg-a stuck; database restored"}
	abort.Branches = []Branch{{Resource: "pg-a", GID: testGID(t, testID(2), "x")}}
	end := Record{Kind: KindEnd, TxID: testID(3), Time: time.Date(1800, 1, 1, 0, 0, 0, 0, time.UTC), Epoch: 3}
	noTime := Record{Kind: KindEnd, TxID: testID(4)}
	held := commitRec(t, testID(5), "pg-b")
	held.Holder = "pg-a"
	return []Record{commit, abort, end, noTime, held}
}

func TestCodecRoundTrip(t *testing.T) {
	for _, want := range codecSamples(t) {
		b, err := EncodeRecord(want)
		if err != nil {
			t.Fatalf("encode %v: %v", want.Kind, err)
		}
		version := byte(formatVersion1)
		if want.Holder != "" {
			version = FormatVersion
		}
		if b[0] != version {
			t.Fatalf("first byte %d, want format version %d", b[0], version)
		}
		got, err := DecodeRecord(b)
		if err != nil {
			t.Fatalf("decode %v: %v", want.Kind, err)
		}
		if !got.Time.Equal(want.Time) {
			t.Errorf("time %v, want %v", got.Time, want.Time)
		}
		got.Time, want.Time = time.Time{}, time.Time{}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
		}
	}
}

func TestCodecVersion1RefusesTheHolderFlag(t *testing.T) {
	r := commitRec(t, testID(1))
	r.Holder = "pg-a"
	b, err := EncodeRecord(r)
	if err != nil {
		t.Fatal(err)
	}
	b[0] = formatVersion1
	if _, err := DecodeRecord(reseal(b)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a version-1 record with the holder flag decoded: %v", err)
	}
	for _, bad := range []Record{
		{Kind: KindAbort, TxID: testID(1), Holder: "pg-a"},
		{Kind: KindEnd, TxID: testID(1), Holder: "pg-a"},
		{Kind: KindCommit, TxID: testID(1), Branches: r.Branches, Holder: "pg.a"},
	} {
		if _, err := EncodeRecord(bad); !errors.Is(err, ErrBadRecord) {
			t.Errorf("encode %+v: %v, want ErrBadRecord", bad, err)
		}
	}
}

func TestCodecLSNIsNotEncoded(t *testing.T) {
	r := commitRec(t, testID(1))
	a, _ := EncodeRecord(r)
	r.LSN = 99
	b, _ := EncodeRecord(r)
	if !bytes.Equal(a, b) {
		t.Fatal("LSN changed the encoding; it belongs in the key")
	}
}

func TestEncodeRejectsInvalidRecords(t *testing.T) {
	bad := []Record{
		{Kind: 0, TxID: testID(1)},
		{Kind: KindEnd},
		{Kind: KindCommit, TxID: testID(1)},
		{Kind: KindEnd, TxID: testID(1), Branches: commitRec(t, testID(1)).Branches},
		{Kind: KindEnd, TxID: testID(1), Time: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	for i, r := range bad {
		if _, err := EncodeRecord(r); !errors.Is(err, ErrBadRecord) {
			t.Errorf("case %d: err %v, want ErrBadRecord", i, err)
		}
	}
}

// reseal replaces the checksum of an encoding after a test changed it.
func reseal(b []byte) []byte {
	body := b[:len(b)-crcLen]
	return binary.BigEndian.AppendUint32(append([]byte(nil), body...), crc32.Checksum(body, castagnoli))
}

func TestDecodeDetectsDamage(t *testing.T) {
	good, err := EncodeRecord(commitRec(t, testID(1)))
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte { b := bytes.Clone(good); b[i] ^= 0x40; return b }
	cases := map[string]struct {
		in   []byte
		want string
	}{
		"empty":              {nil, "empty"},
		"unknown version":    {reseal(append([]byte{9}, good[1:]...)), "unknown record format version 9"},
		"flipped payload":    {flip(len(good) / 2), "checksum"},
		"flipped checksum":   {flip(len(good) - 1), "checksum"},
		"truncated":          {good[:len(good)-5], "checksum"},
		"short":              {good[:5], "shorter"},
		"bad kind":           {reseal(append([]byte{1, 9}, good[2:]...)), "unknown kind"},
		"zero txid":          {reseal(append(append([]byte{1, 1}, make([]byte, 16)...), good[18:]...)), "zero transaction id"},
		"unknown flags":      {reseal(append(append(bytes.Clone(good[:18]), 0x80), good[19:]...)), "unknown flags"},
		"trailing bytes":     {reseal(append(bytes.Clone(good[:len(good)-crcLen]), 0, 0, 0, 0, 0)), "trailing"},
		"huge branch count":  {hugeCount(good), "exceeds"},
		"bad gid":            {badGID(t, good), "branch 0"},
		"gid of another txn": {otherTxGID(t), "another transaction"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeRecord(c.in)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %q does not mention %q", err, c.want)
			}
		})
	}
}

// hugeCount rewrites the branch count of a record without time to 2^62.
func hugeCount(good []byte) []byte {
	r, _ := DecodeRecord(good)
	r.Time = time.Time{}
	enc, _ := EncodeRecord(r)
	// version, kind, txid, flags, epoch (1 byte since Epoch is 0), count
	head := bytes.Clone(enc[:20])
	head = binary.AppendUvarint(head, 1<<62)
	return reseal(append(append(head, enc[21:len(enc)-crcLen]...), 0, 0, 0, 0))
}

func badGID(t *testing.T, good []byte) []byte {
	s := string(good)
	g := testGID(t, testID(1), "a").String()
	i := strings.Index(s, g)
	if i < 0 {
		t.Fatal("gid not found in encoding")
	}
	b := []byte(s)
	b[i] = '!'
	return reseal(b)
}

func otherTxGID(t *testing.T) []byte {
	r := commitRec(t, testID(1))
	enc, _ := EncodeRecord(r)
	g1, g2 := testGID(t, testID(1), "a").String(), testGID(t, testID(2), "a").String()
	return reseal(bytes.Replace(enc, []byte(g1), []byte(g2), 1))
}

func FuzzDecodeRecord(f *testing.F) {
	for _, r := range codecSamples(f) {
		b, err := EncodeRecord(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, in []byte) {
		h, herr := decodeHeader(in)
		if herr != nil && !errors.Is(herr, ErrCorrupt) {
			t.Fatalf("header error %v does not wrap ErrCorrupt", herr)
		}
		r, err := DecodeRecord(in)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		// What opening a log reads of a record agrees with the record.
		if herr != nil {
			t.Fatalf("a record that decodes has a header that does not: %v", herr)
		}
		if h.kind != r.Kind || h.txid != r.TxID || h.holder != (r.Holder != "") || h.hasT != !r.Time.IsZero() ||
			(h.hasT && h.time != r.Time.UnixNano()) {
			t.Fatalf("header %+v disagrees with record %+v", h, r)
		}
		enc, err := EncodeRecord(r)
		if err != nil {
			t.Fatalf("decoded record does not encode: %v\n%+v", err, r)
		}
		r2, err := DecodeRecord(enc)
		if err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if !reflect.DeepEqual(r, r2) {
			t.Fatalf("unstable:\n%+v\n%+v", r, r2)
		}
		enc2, err := EncodeRecord(r2)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding unstable: %v", err)
		}
	})
}
