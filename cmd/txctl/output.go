package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// printJSON writes v as indented JSON: proto messages with their proto
// field names, anything else with encoding/json.
func printJSON(w io.Writer, v any) error {
	if m, ok := v.(proto.Message); ok {
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

func age(d *durationpb.Duration) string {
	if d == nil {
		return "-"
	}
	return roundAge(d.AsDuration())
}

func roundAge(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func ts(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().UTC().Format(time.RFC3339Nano)
}

// dash shows s safely on a terminal: "-" when empty, control characters
// (C0, DEL, C1: terminal escapes, carriage returns) escaped, new lines as
// spaces, at most maxShown runes.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return clean(s)
}

const maxShown = 1024

func clean(s string) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n == maxShown {
			b.WriteString("...")
			break
		}
		n++
		switch {
		case r == '\n' || r == '\t':
			b.WriteByte(' ')
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == utf8.RuneError:
			fmt.Fprintf(&b, "\\x%02x", r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// decisionAt says in a few words where t's decision lives: "log", or its
// decision holder with what the holder's row says when it was asked.
func decisionAt(t *txcoordv1.Transaction) string {
	h := t.GetDecisionHolder()
	if h == "" {
		return "log"
	}
	switch held := t.GetHeldDecision(); {
	case held == "":
		return h
	case strings.HasPrefix(held, "cannot ask"):
		return h + " (cannot ask)"
	default:
		return h + " (row: " + held + ")"
	}
}

// heldWords says what a decision holder's row says, in a sentence.
func heldWords(held string) string {
	switch held {
	case "":
		return "not asked"
	case "commit":
		return "its row says commit"
	case "abort":
		return "its row says abort (a recovery fence found no commit)"
	case "none":
		return "it keeps no row (not decided yet, or finished and forgotten)"
	}
	return held
}

func stateName(s fmt.Stringer) string {
	n := strings.TrimPrefix(s.String(), "TX_STATE_")
	return strings.ReplaceAll(strings.ToLower(n), "_", "-")
}
