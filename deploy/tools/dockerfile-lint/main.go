// Command dockerfile-lint applies BuildKit's Dockerfile checks (the rules of
// `docker build --check`) to the Dockerfiles named on its command line, with no container
// engine and no network: a base image is never pulled, it resolves to an empty linux/amd64
// image whose only variable is PATH (so rules that read a base image's own variables see
// only that one).
//
// Usage: dockerfile-lint Dockerfile...
//
// Prints one line per finding, FILE:LINE: RULE: what; exits 1 if any file has a finding
// or does not parse, 2 on a usage error.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/solver/pb"
	digest "github.com/opencontainers/go-digest"
)

// offline answers every base image with the same empty image config.
type offline struct{}

var emptyImage = []byte(`{"architecture":"amd64","os":"linux","config":{"Env":` +
	`["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}}`)

func (offline) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	return ref, digest.FromBytes(emptyImage), emptyImage, nil
}

// check lints one Dockerfile and prints its findings; it returns how many there were.
func check(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	source := llb.NewSourceMap(nil, path, "Dockerfile", data)
	source.Definition = &llb.Definition{}
	results, err := dockerfile2llb.DockerfileLint(context.Background(), data,
		dockerfile2llb.ConvertOpt{SourceMap: source, MetaResolver: offline{}})
	if err != nil {
		return 0, err
	}
	found := 0
	for _, w := range results.Warnings {
		fmt.Printf("%s:%d: %s: %s\n", path, line(w.Location), w.RuleName, w.Detail)
		found++
	}
	if results.Error != nil {
		fmt.Printf("%s:%d: does not parse: %s\n", path, line(&results.Error.Location),
			results.Error.Message)
		found++
	}
	return found, nil
}

// line is the first line a finding points at (0: the whole file).
func line(loc *pb.Location) int32 {
	if ranges := loc.GetRanges(); len(ranges) > 0 {
		return ranges[0].GetStart().GetLine()
	}
	return 0
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dockerfile-lint Dockerfile...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		found, err := check(path)
		if err != nil {
			fmt.Printf("%s: %v\n", path, err)
			failed = true
		} else if found > 0 {
			failed = true
		} else {
			fmt.Printf("%s: no findings\n", path)
		}
	}
	if failed {
		os.Exit(1)
	}
}
