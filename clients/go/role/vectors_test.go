package role_test

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"leaderlock.dev/go/internal/kubelettest"
	"leaderlock.dev/go/role"
)

// vectorsFile is the one table of role-file cases, shared with the Rust helper's tests
// (src/podside/vectors_tests.rs), which is the reference when the two disagree.
const vectorsFile = "../../../testdata/rolefile/vectors.json"

type vectorTable struct {
	About   []string `json:"about"`
	Vectors []vector `json:"vectors"`
}

type vector struct {
	Name            string   `json:"name"`
	Lock            string   `json:"lock"`
	File            string   `json:"file"`
	Content         *string  `json:"content"`
	ContentHex      *string  `json:"content_hex"`
	ContentRepeat   []repeat `json:"content_repeat"`
	AsKubeletWrites bool     `json:"as_kubelet_writes"`
	Expect          outcome  `json:"expect"`
}

type repeat struct {
	Text  string `json:"text"`
	Times int    `json:"times"`
}

// outcome is a role (with the token when the file carries it) or an error class.
type outcome struct {
	Role  string `json:"role,omitempty"`
	Token int64  `json:"token,omitempty"`
	Error string `json:"error,omitempty"`
	Line  int    `json:"line,omitempty"`
	// The controller's renewal, when the file carries it: the deadline in milliseconds, the mark.
	RenewDeadlineMs int64  `json:"renew_deadline_ms,omitempty"`
	RenewMark       string `json:"renew_mark,omitempty"`
}

func loadVectors(t *testing.T) []vector {
	t.Helper()
	data, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatalf("the shared vectors live in the repository at testdata/rolefile/vectors.json: %v", err)
	}
	decoder := json.NewDecoder(strings.NewReader(string(data)))
	decoder.DisallowUnknownFields()
	var table vectorTable
	if err := decoder.Decode(&table); err != nil {
		t.Fatalf("%s: %v", vectorsFile, err)
	}
	if len(table.Vectors) < 100 {
		t.Fatalf("the table lost vectors: %d", len(table.Vectors))
	}
	seen := map[string]bool{}
	for _, v := range table.Vectors {
		if seen[v.Name] {
			t.Fatalf("duplicate vector name %q", v.Name)
		}
		seen[v.Name] = true
	}
	return table.Vectors
}

func (v vector) content(t *testing.T) []byte {
	t.Helper()
	given := 0
	var content []byte
	if v.Content != nil {
		given++
		content = []byte(*v.Content)
	}
	if v.ContentHex != nil {
		given++
		var err error
		if content, err = hex.DecodeString(*v.ContentHex); err != nil {
			t.Fatalf("%q: content_hex: %v", v.Name, err)
		}
	}
	if v.ContentRepeat != nil {
		given++
		var b strings.Builder
		for _, part := range v.ContentRepeat {
			b.WriteString(strings.Repeat(part.Text, part.Times))
		}
		content = []byte(b.String())
	}
	if given > 1 {
		t.Fatalf("%q: give at most one of content, content_hex, content_repeat", v.Name)
	}
	return content
}

// layOut makes the file in dir as the vector says and returns the path to read.
func (v vector) layOut(t *testing.T, dir string) string {
	t.Helper()
	content := v.content(t)
	path := filepath.Join(dir, "annotations")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%q: %v", v.Name, err)
		}
	}
	switch v.File {
	case "", "regular":
		must(os.WriteFile(path, content, 0o644))
	case "kubelet":
		must(kubelettest.Volume{Dir: dir}.Write(map[string][]byte{"annotations": content}))
	case "symlink":
		must(os.WriteFile(filepath.Join(dir, "target"), content, 0o644))
		must(os.Symlink("target", path))
	case "missing":
	case "dangling-symlink":
		must(os.Symlink("nowhere", path))
	case "directory":
		must(os.Mkdir(path, 0o755))
	case "fifo":
		// mkfifo(1) rather than a system call, so the test builds on every unix.
		must(exec.Command("mkfifo", path).Run())
	case "dev-null":
		must(os.Symlink("/dev/null", path))
	default:
		t.Fatalf("%q: unknown file layout %q", v.Name, v.File)
	}
	return path
}

func outcomeOf(status role.Status, err error) outcome {
	if err != nil {
		e, ok := err.(*role.Error)
		if !ok {
			return outcome{Error: "unexpected: " + err.Error()}
		}
		line := 0
		if e.Kind == role.NotKeyValue || e.Kind == role.BadQuote {
			line = e.Line
		}
		return outcome{Error: e.Kind.String(), Line: line}
	}
	got := outcome{Role: status.Role.String(), Token: status.Token}
	if status.Renewal.IsSet() {
		got.RenewDeadlineMs, got.RenewMark = status.Renewal.Deadline.Milliseconds(), status.Renewal.Mark
	}
	return got
}

// Every vector through Read, on a real file laid out as the vector says.
func TestEveryRoleFileVectorReadsAsTheTableSays(t *testing.T) {
	for _, v := range loadVectors(t) {
		path := v.layOut(t, t.TempDir())
		if got := outcomeOf(role.Read(path, v.Lock)); got != v.Expect {
			t.Errorf("%q: expected %+v, got %+v", v.Name, v.Expect, got)
		}
	}
}

// The same vectors through the pure Parse, where the content alone decides.
func TestEveryContentVectorParsesAsTheTableSays(t *testing.T) {
	for _, v := range loadVectors(t) {
		switch v.File {
		case "", "regular", "kubelet", "symlink":
		default:
			continue
		}
		if got := outcomeOf(role.Parse(v.content(t), v.Lock)); got != v.Expect {
			t.Errorf("%q: expected %+v, got %+v", v.Name, v.Expect, got)
		}
	}
}

// Vectors marked as the kubelet's output are exactly that: quoting the parsed annotations
// again with Go's %q, as the kubelet does, gives the file back byte for byte.
func TestKubeletVectorsAreWhatTheKubeletWrites(t *testing.T) {
	marked := 0
	for _, v := range loadVectors(t) {
		if !v.AsKubeletWrites {
			continue
		}
		marked++
		content := v.content(t)
		annotations, err := role.ParseAnnotations(content)
		if err != nil {
			t.Errorf("%q: %v", v.Name, err)
			continue
		}
		if again := kubelettest.FormatMap(annotations); again != string(content) {
			t.Errorf("%q: the kubelet would write\n%s\nnot\n%s", v.Name, again, content)
		}
	}
	if marked == 0 {
		t.Fatal("no vector is marked as_kubelet_writes")
	}
}
