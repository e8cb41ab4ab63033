// Command protogen regenerates the Go code of every .proto file under the
// given roots with protoc-gen-go and protoc-gen-go-grpc (the module's tool
// dependencies), compiling the .proto files in-process, so that no protoc
// binary is needed.
//
//	go run ./internal/tools/protogen proto examples/order/proto
//	go run ./internal/tools/protogen -check proto   # exit 1 if the committed code differs
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bufbuild/protocompile"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/pluginpb"
)

// plugins are run as `go tool <name>` with the module's pinned versions.
var plugins = []string{"protoc-gen-go", "protoc-gen-go-grpc"}

func main() {
	check := flag.Bool("check", false, "compare with the files on disk instead of writing them; exit 1 on any difference")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: protogen [-check] ROOT...\n\nEach ROOT is an import root; every .proto file under it is generated beside itself.\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx := context.Background()
	stale := 0
	for _, root := range flag.Args() {
		out, err := Generate(ctx, root)
		if err != nil {
			fmt.Fprintln(os.Stderr, "protogen:", err)
			os.Exit(1)
		}
		diffs, err := apply(root, out, *check)
		if err != nil {
			fmt.Fprintln(os.Stderr, "protogen:", err)
			os.Exit(1)
		}
		for _, d := range diffs {
			fmt.Fprintf(os.Stderr, "protogen: %s is not what its .proto generates; run `make proto` and commit the result\n", d)
		}
		stale += len(diffs)
	}
	if stale > 0 {
		os.Exit(1)
	}
}

// apply writes out under root, or with check only reports which files
// differ from out (or are missing).
func apply(root string, out map[string][]byte, check bool) ([]string, error) {
	names := make([]string, 0, len(out))
	for n := range out {
		names = append(names, n)
	}
	sort.Strings(names)
	var diffs []string
	for _, n := range names {
		path := filepath.Join(root, filepath.FromSlash(n))
		if check {
			old, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(old, out[n]) {
				diffs = append(diffs, path)
			}
			continue
		}
		if err := os.WriteFile(path, out[n], 0o644); err != nil {
			return nil, err
		}
	}
	return diffs, nil
}

// Generate compiles every .proto file under root and returns the generated
// files, by path relative to root.
func Generate(ctx context.Context, root string) (map[string][]byte, error) {
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".proto") {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no .proto files under %s", root)
	}
	sort.Strings(files)
	comp := protocompile.Compiler{
		Resolver:       protocompile.WithStandardImports(&protocompile.SourceResolver{ImportPaths: []string{root}}),
		SourceInfoMode: protocompile.SourceInfoStandard,
	}
	compiled, err := comp.Compile(ctx, files...)
	if err != nil {
		return nil, err
	}
	req := &pluginpb.CodeGeneratorRequest{FileToGenerate: files, Parameter: proto.String("paths=source_relative")}
	seen := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		imps := fd.Imports()
		for i := 0; i < imps.Len(); i++ {
			add(imps.Get(i).FileDescriptor)
		}
		req.ProtoFile = append(req.ProtoFile, protodesc.ToFileDescriptorProto(fd))
	}
	for _, f := range compiled {
		add(f)
	}
	// Plugins are given source info only for the files they generate.
	for _, fp := range req.ProtoFile {
		if !contains(files, fp.GetName()) {
			fp.SourceCodeInfo = nil
		}
	}
	out := map[string][]byte{}
	for _, plugin := range plugins {
		resp, err := run(ctx, plugin, req)
		if err != nil {
			return nil, err
		}
		for _, f := range resp.File {
			if f.GetInsertionPoint() != "" {
				return nil, fmt.Errorf("%s: insertion points are not supported", plugin)
			}
			out[f.GetName()] = []byte(f.GetContent())
		}
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func run(ctx context.Context, plugin string, req *pluginpb.CodeGeneratorRequest) (*pluginpb.CodeGeneratorResponse, error) {
	in, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "go", "tool", plugin)
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go tool %s: %v: %s", plugin, err, strings.TrimSpace(stderr.String()))
	}
	resp := &pluginpb.CodeGeneratorResponse{}
	if err := proto.Unmarshal(stdout.Bytes(), resp); err != nil {
		return nil, fmt.Errorf("%s: unreadable response: %w", plugin, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("%s: %s", plugin, resp.GetError())
	}
	return resp, nil
}
