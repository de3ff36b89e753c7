package role_test

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/quick"

	"leaderlock.dev/go/internal/kubelettest"
	"leaderlock.dev/go/role"
)

func TestErrorsNameTheFileAndSayWhatToDo(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := exec.Command("mkfifo", fifo).Run(); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("a=\"x\"\nnot a pair"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path, lock string
		kind       role.ErrorKind
		mentions   []string
	}{
		{filepath.Join(dir, "missing"), "l", role.Unreadable, []string{"missing", "mount the downward-API volume"}},
		{fifo, "l", role.NotRegular, []string{fifo, "a FIFO (named pipe)", "not a regular file"}},
		{dir, "l", role.NotRegular, []string{"a directory"}},
		{"/dev/null", "l", role.NotRegular, []string{"a character device"}},
		{garbage, "l", role.NotKeyValue, []string{garbage, "line 2", `"not a pair"`}},
		{garbage, "Bad", role.InvalidLock, []string{`"Bad"`, "DNS-1123 label"}},
	}
	for _, c := range cases {
		_, err := role.Read(c.path, c.lock)
		if role.KindOf(err) != c.kind {
			t.Errorf("%s: got %v, want kind %v", c.path, err, c.kind)
			continue
		}
		for _, m := range c.mentions {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%s: %q does not mention %q", c.path, err, m)
			}
		}
	}
	_, err := role.Read(filepath.Join(dir, "missing"), "l")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing file's error does not wrap fs.ErrNotExist: %v", err)
	}
}

func TestAFileReadThroughTheKubeletsSymlinksFollowsEverySwap(t *testing.T) {
	volume := kubelettest.Volume{Dir: t.TempDir()}
	for i, want := range []role.Status{{Role: role.Standby}, {Role: role.Leader, Token: 3}, {Role: role.Absent}, {Role: role.Leader, Token: 4}} {
		var roleValue, token string
		switch want.Role {
		case role.Leader:
			roleValue, token = "leader", want.TokenString()
		case role.Standby:
			roleValue = "standby"
		}
		if err := volume.WriteAnnotations(kubelettest.Role("l", roleValue, token)); err != nil {
			t.Fatal(err)
		}
		got, err := role.Read(volume.Path("annotations"), "l")
		if err != nil || got != want {
			t.Fatalf("update %d: got %v, %v; want %v", i, got, err, want)
		}
	}
	// Only the current timestamped directory is left, as with the kubelet.
	entries, _ := os.ReadDir(volume.Dir)
	dirs := 0
	for _, e := range entries {
		if e.IsDir() {
			dirs++
		}
	}
	if dirs != 1 {
		t.Errorf("%d timestamped directories left, want 1", dirs)
	}
}

// Whatever other annotations a pod carries, quoted as the kubelet quotes them, the lock's role
// reads back as written.
func TestAnyOtherAnnotationsLeaveTheRoleReadable(t *testing.T) {
	check := func(others map[string]string, leader bool, token uint32) bool {
		annotations := map[string]string{}
		for key, value := range others {
			// Keys as the API server allows them never hold '=' or spaces; values are free.
			key = "example.com/" + strings.Map(func(r rune) rune {
				if r == '=' || r <= ' ' || r == 0x7f || r > 0x7e {
					return 'k'
				}
				return r
			}, key)
			annotations[key] = value
		}
		want := role.Status{Role: role.Standby}
		annotations["leaderlock.dev/l"] = "standby"
		if leader {
			want = role.Status{Role: role.Leader, Token: int64(token) + 1}
			annotations["leaderlock.dev/l"] = "leader"
			annotations["leaderlock.dev/l.token"] = want.TokenString()
		}
		got, err := role.Parse([]byte(kubelettest.FormatMap(annotations)), "l")
		return err == nil && got == want
	}
	if err := quick.Check(check, &quick.Config{MaxCount: 500}); err != nil {
		t.Fatal(err)
	}
}

// Every value survives the kubelet's %q and our parsing unchanged, invalid UTF-8 included.
func TestAnyValueRoundTripsThroughTheKubeletsQuoting(t *testing.T) {
	check := func(value string, raw []byte) bool {
		for _, v := range []string{value, string(raw)} {
			parsed, err := role.ParseAnnotations([]byte(kubelettest.FormatMap(map[string]string{"a": v})))
			if err != nil || parsed["a"] != v {
				return false
			}
		}
		return true
	}
	if err := quick.Check(check, &quick.Config{MaxCount: 1000}); err != nil {
		t.Fatal(err)
	}
}

func TestStatusPrintsAsLeaderlockRolePrints(t *testing.T) {
	for status, want := range map[role.Status]string{
		{Role: role.Leader, Token: 18233}: "leader 18233",
		{Role: role.Leader}:               "leader",
		{Role: role.Standby}:              "standby",
		{Role: role.Absent}:               "absent",
	} {
		if got := status.String(); got != want {
			t.Errorf("%#v prints %q, want %q", status, got, want)
		}
	}
}
