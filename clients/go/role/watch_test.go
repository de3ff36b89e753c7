package role_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"leaderlock.dev/go/internal/kubelettest"
	"leaderlock.dev/go/role"
)

// patience bounds every wait for something that must happen; the notification itself comes
// within milliseconds.
const patience = 10 * time.Second

// waitForStatus reads after every notification until the role is want.
func waitForStatus(t *testing.T, w *role.Watcher, want role.Status) {
	t.Helper()
	deadline := time.After(patience)
	for {
		got, err := w.Read()
		if err != nil {
			t.Fatal(err)
		}
		if got == want {
			return
		}
		select {
		case <-w.Changes():
		case <-deadline:
			t.Fatalf("still %v after %v, want %v", got, patience, want)
		}
	}
}

func TestTheWatcherSeesTheKubeletsDataSymlinkSwap(t *testing.T) {
	volume := kubelettest.Volume{Dir: t.TempDir()}
	if err := volume.WriteAnnotations(kubelettest.Role("l", "standby", "")); err != nil {
		t.Fatal(err)
	}
	w, err := role.NewWatcher(volume.Path("annotations"), "l")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	waitForStatus(t, w, role.Status{Role: role.Standby})
	for _, step := range []struct {
		roleValue, token string
		want             role.Status
	}{
		{"leader", "7", role.Status{Role: role.Leader, Token: 7}},
		{"leader", "8", role.Status{Role: role.Leader, Token: 8}},
		{"", "", role.Status{Role: role.Absent}},
		{"standby", "", role.Status{Role: role.Standby}},
	} {
		if err := volume.WriteAnnotations(kubelettest.Role("l", step.roleValue, step.token)); err != nil {
			t.Fatal(err)
		}
		waitForStatus(t, w, step.want)
	}
}

func TestTheWatcherSeesAFileWrittenInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger-writer")
	if err := os.WriteFile(path, []byte("standby"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := role.NewWatcher(path, "l")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := os.WriteFile(path, []byte("leader"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitForStatus(t, w, role.Status{Role: role.Leader})
}

func TestAWatcherNeedsTheDirectoryAndAValidLock(t *testing.T) {
	if _, err := role.NewWatcher(filepath.Join(t.TempDir(), "no-such-dir", "annotations"), "l"); err == nil {
		t.Error("watching a missing directory succeeded")
	}
	if _, err := role.NewWatcher(filepath.Join(t.TempDir(), "annotations"), "L"); role.KindOf(err) != role.InvalidLock {
		t.Errorf("an invalid lock name: %v", err)
	}
}

func TestCloseEndsTheWatcherOnce(t *testing.T) {
	w, err := role.NewWatcher(filepath.Join(t.TempDir(), "annotations"), "l")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
