// Package kubelettest lays out and updates a directory the way the kubelet updates a
// downward-API volume, for tests: every update writes a new timestamped directory, points a
// `..data_tmp` symlink at it, renames that over `..data` (one atomic step that inotify on the
// directory reports), makes the user-visible symlinks `<file> -> ..data/<file>` if missing,
// and removes the previous timestamped directory.
package kubelettest

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

const (
	dataDir    = "..data"
	dataDirTmp = "..data_tmp"
)

// Volume is a downward-API volume's directory.
type Volume struct {
	Dir string
}

// Path is where a container sees the file name of the volume.
func (v Volume) Path(name string) string { return filepath.Join(v.Dir, name) }

// Write replaces the volume's files with files (name -> content), as one atomic update.
func (v Volume) Write(files map[string][]byte) error {
	old, _ := os.Readlink(filepath.Join(v.Dir, dataDir))
	// The kubelet names the directory from the time and a random suffix.
	tsDir, err := os.MkdirTemp(v.Dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return err
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(tsDir, name), content, 0o644); err != nil {
			return err
		}
	}
	tmpLink := filepath.Join(v.Dir, dataDirTmp)
	if err := os.Symlink(filepath.Base(tsDir), tmpLink); err != nil {
		return err
	}
	if err := os.Rename(tmpLink, filepath.Join(v.Dir, dataDir)); err != nil {
		return err
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		link := filepath.Join(v.Dir, name)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join(dataDir, name), link); err != nil {
			return err
		}
	}
	if old != "" {
		return os.RemoveAll(filepath.Join(v.Dir, old))
	}
	return nil
}

// WriteAnnotations writes the projection of metadata.annotations under the name "annotations",
// formatted as the kubelet formats it (fieldpath.FormatMap: `%v=%q` lines sorted by key, no
// final newline).
func (v Volume) WriteAnnotations(annotations map[string]string) error {
	return v.Write(map[string][]byte{"annotations": []byte(FormatMap(annotations))})
}

// FormatMap formats annotations as the kubelet does for a downward-API file.
func FormatMap(annotations map[string]string) string {
	keys := make([]string, 0, len(annotations))
	for key := range annotations {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	lines := make([]string, 0, len(keys))
	for _, key := range keys {
		lines = append(lines, fmt.Sprintf("%v=%q", key, annotations[key]))
	}
	return strings.Join(lines, "\n")
}

// Role is the annotations LeaderLock's controller sets for lock: the role, and the token on the
// holder (token "" for none). role "" sets no annotation at all (not a candidate).
func Role(lock, role, token string) map[string]string {
	annotations := map[string]string{"example.com/unrelated": "x=\"y\"\n"}
	if role != "" {
		annotations["leaderlock.dev/"+lock] = role
	}
	if token != "" {
		annotations["leaderlock.dev/"+lock+".token"] = token
	}
	return annotations
}
