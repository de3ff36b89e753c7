package role

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A change that no notification reports is still seen, by the safety re-read. Here the watched
// directory holds only a symlink to a file in another directory, so writing that file makes no
// event where the watcher looks.
func TestTheSafetyRereadSeesAChangeNoNotificationReported(t *testing.T) {
	saved := safetyReread
	safetyReread = 50 * time.Millisecond
	defer func() { safetyReread = saved }()

	elsewhere := filepath.Join(t.TempDir(), "real")
	if err := os.WriteFile(elsewhere, []byte("standby"), 0o644); err != nil {
		t.Fatal(err)
	}
	watched := t.TempDir()
	path := filepath.Join(watched, "annotations")
	if err := os.Symlink(elsewhere, path); err != nil {
		t.Fatal(err)
	}
	w, err := NewWatcher(path, "l")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := os.WriteFile(elsewhere, []byte("leader"), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case <-w.Changes():
		case <-deadline:
			t.Fatal("the safety re-read never came")
		}
		if status, err := w.Read(); err != nil || status.IsLeader() {
			if err != nil {
				t.Fatal(err)
			}
			return
		}
	}
}
