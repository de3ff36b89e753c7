// Command ocipack packs files of this machine into a single-layer OCI image and writes it as an
// image tarball that `ctr images import` (or `docker load`, `skopeo copy`) accepts. No container
// daemon and no registry are needed, so the image tested on the local node is built here.
//
//	ocipack -o out.tar -ref leaderlock.dev/leaderlock:dev \
//	  -add target/release/leaderlock=/leaderlock -symlink /bin/sh=busybox \
//	  -entrypoint /leaderlock -cmd controller -user 65532:65532
//
// The layer is reproducible: entries are sorted, owned by root and dated at the Unix epoch, so
// the same inputs give the same image digest.
//
// `ocipack -inspect image.tar` prints what a reader checks: the config's entrypoint, cmd, user,
// env and every path in the layer with its mode.
package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// entry is one path of the layer.
type entry struct {
	path   string // absolute path in the image
	src    string // file on this machine (regular files)
	link   string // target (symlinks)
	isDir  bool
	mode   int64
	length int64
}

func main() {
	var adds, links, dirs, env, entrypoint, cmd list
	out := flag.String("o", "", "image tarball to write")
	ref := flag.String("ref", "", "image reference recorded in the tarball, e.g. leaderlock.dev/leaderlock:dev")
	user := flag.String("user", "", "user[:group] the image runs as")
	workdir := flag.String("workdir", "", "working directory")
	inspect := flag.String("inspect", "", "print the config and file list of an image tarball and exit")
	flag.Var(&adds, "add", "SRC=DST: copy file SRC to DST (mode kept); repeatable")
	flag.Var(&links, "symlink", "DST=TARGET: symbolic link; repeatable")
	flag.Var(&dirs, "dir", "DST: an empty directory (mode 1777 for /tmp, else 0755); repeatable")
	flag.Var(&env, "env", "K=V: environment variable; repeatable")
	flag.Var(&entrypoint, "entrypoint", "entrypoint word; repeatable, in order")
	flag.Var(&cmd, "cmd", "cmd word; repeatable, in order")
	flag.Parse()

	if *inspect != "" {
		if err := printImage(*inspect); err != nil {
			fail("inspect %s: %v", *inspect, err)
		}
		return
	}
	if *out == "" || *ref == "" {
		fail("-o and -ref are required (see -h)")
	}
	entries, err := collect(adds, links, dirs)
	if err != nil {
		fail("%v", err)
	}
	img, err := build(entries, v1.Config{
		Entrypoint: entrypoint, Cmd: cmd, User: *user, Env: env, WorkingDir: *workdir,
	})
	if err != nil {
		fail("build image: %v", err)
	}
	tag, err := name.NewTag(*ref)
	if err != nil {
		fail("image reference %q: %v", *ref, err)
	}
	if err := tarball.WriteToFile(*out, tag, img); err != nil {
		fail("write %s: %v", *out, err)
	}
	digest, err := img.Digest()
	if err != nil {
		fail("digest: %v", err)
	}
	fmt.Println(digest.String())
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "ocipack: "+format+"\n", args...)
	os.Exit(1)
}

// collect turns the flags into layer entries, adding every parent directory.
func collect(adds, links, dirs list) ([]entry, error) {
	byPath := map[string]entry{}
	addParents := func(p string) {
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			if _, ok := byPath[d]; !ok {
				byPath[d] = entry{path: d, isDir: true, mode: 0o755}
			}
		}
	}
	for _, a := range adds {
		src, dst, ok := strings.Cut(a, "=")
		if !ok || !path.IsAbs(dst) {
			return nil, fmt.Errorf("-add %q: want SRC=/absolute/dst", a)
		}
		st, err := os.Stat(src)
		if err != nil {
			return nil, fmt.Errorf("-add %q: %w", a, err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("-add %q: %s is not a regular file", a, src)
		}
		byPath[dst] = entry{path: dst, src: src, mode: int64(st.Mode().Perm()), length: st.Size()}
		addParents(dst)
	}
	for _, l := range links {
		dst, target, ok := strings.Cut(l, "=")
		if !ok || !path.IsAbs(dst) {
			return nil, fmt.Errorf("-symlink %q: want /absolute/dst=TARGET", l)
		}
		byPath[dst] = entry{path: dst, link: target, mode: 0o777}
		addParents(dst)
	}
	for _, d := range dirs {
		mode := int64(0o755)
		if d == "/tmp" {
			mode = 0o1777
		}
		byPath[d] = entry{path: d, isDir: true, mode: mode}
		addParents(d)
	}
	entries := make([]entry, 0, len(byPath))
	for _, e := range byPath {
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].path < entries[j].path })
	return entries, nil
}

// build writes the entries into one uncompressed tar layer and wraps it in an image.
func build(entries []entry, cfg v1.Config) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0).UTC()
	for _, e := range entries {
		h := &tar.Header{Name: strings.TrimPrefix(e.path, "/"), Mode: e.mode, ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case e.isDir:
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		case e.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, e.length
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if e.src != "" {
			if err := copyFile(tw, e.src, e.length); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: epoch}
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}

func copyFile(w io.Writer, src string, length int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, f)
	if err == nil && n != length {
		err = fmt.Errorf("%s changed size while packing", src)
	}
	return err
}

// printImage prints the parts of an image a reviewer compares: config and layer listing.
func printImage(file string) error {
	img, err := tarball.ImageFromPath(file, nil)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg, err := json.Marshal(map[string]any{
		"entrypoint": cf.Config.Entrypoint, "cmd": cf.Config.Cmd, "user": cf.Config.User,
		"env": cf.Config.Env, "os": cf.OS, "architecture": cf.Architecture,
	})
	if err != nil {
		return err
	}
	fmt.Printf("config %s\n", cfg)
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return err
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				rc.Close()
				return err
			}
			fmt.Printf("%c %04o %s", h.Typeflag, h.Mode, "/"+strings.TrimSuffix(h.Name, "/"))
			if h.Typeflag == tar.TypeSymlink {
				fmt.Printf(" -> %s", h.Linkname)
			}
			fmt.Println()
		}
		rc.Close()
	}
	return nil
}
