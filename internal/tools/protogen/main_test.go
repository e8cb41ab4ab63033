package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestGeneratedCodeIsCurrent fails when a .proto file was changed without
// running `make proto`, or generated code was edited by hand.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the protoc plugins")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, root := range roots(t) {
		out, err := Generate(ctx, root)
		if err != nil {
			t.Fatalf("generate %s: %v", root, err)
		}
		diffs, err := apply(root, out, true)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range diffs {
			t.Errorf("%s differs from what its .proto generates; run `make proto` and commit the result", d)
		}
	}
}

// TestCheckSeesDrift shows the check above can fail.
func TestCheckSeesDrift(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.pb.go"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	diffs, err := apply(dir, map[string][]byte{"a.pb.go": []byte("new"), "b.pb.go": []byte("x")}, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(diffs) != 2 {
		t.Fatalf("want a changed and a missing file reported, got %v", diffs)
	}
}

func roots(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, r := range []string{"proto", "examples/order/proto"} {
		p := filepath.Join("..", "..", "..", r)
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		t.Fatal("no proto roots found")
	}
	return out
}
