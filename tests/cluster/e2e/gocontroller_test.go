package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

// criLine is a line as containerd writes it for the kubelet: time, stream, full-line tag, text.
func criLine(text string) string { return "2026-12-04T10:00:00.000000000Z stderr F " + text }

func TestParseTermLineTakesTheExamplesThreeMessages(t *testing.T) {
	l, ok := parseTermLine(criLine(`{"level":"info","msg":"leading","token":"12","at":"2026-12-04T10:00:01.5Z"}`))
	if !ok || l.Msg != "leading" || l.Token != "12" || !l.At.Equal(at(1500)) {
		t.Fatalf("got %+v %v", l, ok)
	}
	for _, line := range []string{
		criLine(`{"msg":"Starting workers","at":"2026-12-04T10:00:01Z"}`),
		"2026-12-04T10:00:00Z stderr P " + `{"msg":"leading","at":"2026-12-04T10:00:01Z"}`,
		criLine(`{"msg":"reconciled"}`),
		criLine("not json"),
	} {
		if _, ok := parseTermLine(line); ok {
			t.Fatalf("took %q", line)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A restarted container writes a new file: a new process. A line still being written is read
// once it is whole.
func TestLogTailKeepsOneProcessPerFileAndReadsWholeLinesOnly(t *testing.T) {
	dir := t.TempDir()
	first := filepath.Join(dir, "ns_pod-a_uid1", "worker", "0.log")
	writeFile(t, first, criLine(`{"msg":"leading","token":"3","at":"2026-12-04T10:00:01Z"}`)+"\n"+
		criLine(`{"msg":"reconciled","at":"2026-12-04T10:00:01.010Z"}`)+"\n"+
		criLine(`{"msg":"reconciled","at":"2026-12-04T10:00:01.020Z"}`)+"\n"+criLine(`{"msg":"stopped`))
	writeFile(t, filepath.Join(dir, "ns_pod-a_uid1", "worker", "1.log"), "")
	writeFile(t, filepath.Join(dir, "other_pod-z_uid9", "worker", "0.log"), criLine(`{"msg":"leading","at":"2026-12-04T10:00:01Z"}`)+"\n")
	tail := newLogTail()
	tail.scan(dir, "ns")
	procs := tail.snapshot()
	if len(procs) != 1 || procs[0].Key != "pod-a#0" || procs[0].Token != "3" || procs[0].Reconciles != 2 ||
		!procs[0].FirstReconcile.Equal(at(1010)) || !procs[0].Stopped.IsZero() {
		t.Fatalf("procs %+v", procs)
	}
	f, err := os.OpenFile(first, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(` leading","at":"2026-12-04T10:00:02Z"}` + "\n")
	f.Close()
	tail.scan(dir, "ns")
	if p := tail.snapshot()[0]; !p.Stopped.Equal(at(2000)) || p.Reconciles != 2 {
		t.Fatalf("after the rest of the line: %+v", p)
	}
	if len(active(tail.snapshot())) != 0 {
		t.Fatal("a stopped process is active")
	}
}

func TestAKilledProcessEndsAtItsKill(t *testing.T) {
	tail := newLogTail()
	tail.procLocked("pod-a#0", "pod-a").add(termLine{Msg: "leading", At: at(0)})
	if len(active(tail.snapshot())) != 1 {
		t.Fatal("a leading process is not active")
	}
	tail.endAt("pod-a#0", at(500))
	if p := tail.snapshot()[0]; !p.Stopped.Equal(at(500)) || len(active(tail.snapshot())) != 0 {
		t.Fatalf("after the kill: %+v", p)
	}
}

func TestCurrentKeyIsThePodsNewestContainer(t *testing.T) {
	procs := []proc{{Key: "a#2", Pod: "a"}, {Key: "a#10", Pod: "a"}, {Key: "b#11", Pod: "b"}}
	if k := currentKey(procs, "a"); k != "a#10" {
		t.Fatalf("current %q, want a#10", k)
	}
	if k := currentKey(procs, "c"); k != "" {
		t.Fatalf("current %q for a pod with no process", k)
	}
}

// The old leader stops at 1000 ms; the new one led from 800 ms (its first reconcile came
// before its "leading" line): 200 ms of overlap. A third that only touches adds none.
func TestOverlapIsTheTimeTwoTermsRanAtOnce(t *testing.T) {
	procs := []proc{
		{Key: "old#0", Leading: at(0), Stopped: at(1000)},
		{Key: "new#0", Leading: at(850), FirstReconcile: at(800)},
		{Key: "standby#0"},
	}
	if d := overlapWithin(procs, at(500), at(3000)); d != 200*time.Millisecond {
		t.Fatalf("overlap %v, want 200ms", d)
	}
	touching := []proc{{Key: "a#0", Leading: at(0), Stopped: at(1000)}, {Key: "b#0", Leading: at(1000)}}
	if d := overlapWithin(touching, at(0), at(2000)); d != 0 {
		t.Fatalf("touching terms overlap %v", d)
	}
}

func TestRequestCountsSumByMethodAndSplitWrites(t *testing.T) {
	page := `# HELP rest_client_requests_total Number of HTTP requests.
# TYPE rest_client_requests_total counter
rest_client_requests_total{code="200",host="10.244.0.1:6443",method="GET"} 90
rest_client_requests_total{code="200",host="10.244.0.1:6443",method="PUT"} 30
rest_client_requests_total{code="409",host="10.244.0.1:6443",method="PUT"} 1
rest_client_requests_total{code="201",host="10.244.0.1:6443",method="POST"} 2
workqueue_adds_total{name="configmap"} 7
`
	c := parseRequestCounts(page)
	if c["GET"] != 90 || c["PUT"] != 31 || c["POST"] != 2 {
		t.Fatalf("counts %v", c)
	}
	if w, all := c.split(); w != 33 || all != 123 {
		t.Fatalf("writes %d all %d, want 33 and 123", w, all)
	}
}

func TestWatchReplayCountsOnlyTheWindow(t *testing.T) {
	stream := `{"type":"MODIFIED","object":{"metadata":{"resourceVersion":"100"}}}
{"type":"MODIFIED","object":{"metadata":{"resourceVersion":"101"}}}
{"type":"ADDED","object":{"metadata":{"resourceVersion":"150"}}}
{"type":"MODIFIED","object":{"metadata":{"resourceVersion":"151"}}}`
	n, err := countWatchEvents(stream, 100, 150)
	if err != nil || n != 2 {
		t.Fatalf("counted %d (%v), want 2", n, err)
	}
	_, err = countWatchEvents(`{"type":"ERROR","object":{"message":"too old resource version: 1 (5)"}}`, 1, 9)
	if err == nil || !strings.Contains(err.Error(), "too old") {
		t.Fatalf("a watch error was not reported: %v", err)
	}
}

func TestHasPhaseMatchesWholeNames(t *testing.T) {
	if hasPhase("leaderlock,clientgo", "go") || !hasPhase("leaderlock, go", "go") {
		t.Fatal("phases are matched by whole name")
	}
}

func TestGoFieldsNameBothElections(t *testing.T) {
	r := newGoResults(time.Minute)
	r.samples["dropin/graceful"] = []goSample{{Gap: 900 * time.Millisecond}, {Gap: 1200 * time.Millisecond}}
	r.samples["lease/crash"] = []goSample{{Gap: 16 * time.Second, Overlap: 0}}
	r.idle["dropin"] = idleFigures{Window: time.Minute, Changes: map[string]int{}}
	r.idle["lease"] = idleFigures{Window: 30 * time.Second, Writes: 15, Changes: map[string]int{"leases": 14}}
	got := r.fields()
	for _, want := range []string{"go_dropin_gap_p99_ms=1200", "go_dropin_idle_writes_per_min=0", "go_lease_gap_p99_ms=–",
		"go_lease_crash_p99_ms=16000", "go_lease_idle_writes_per_min=30"} {
		if !strings.Contains(got, want) {
			t.Fatalf("%q lacks %s", got, want)
		}
	}
	if md := r.markdown(); !strings.HasPrefix(md, goSectionBegin) || !strings.Contains(md, goSectionEnd) {
		t.Fatal("the section lacks its markers")
	}
}

// Only the Lease variant may touch Leases, and only the drop-in mounts the role file.
func TestTheWorkloadsDifferOnlyInTheirElection(t *testing.T) {
	dropin := goControllerWorkload("ns", "img", "leaderlock", "10.0.0.1", "6443", 3)
	lease := goControllerWorkload("ns", "img", "lease", "10.0.0.1", "6443", 3)
	if strings.Contains(dropin, "leases") || !strings.Contains(dropin, "kind: LeaderLock") || !strings.Contains(dropin, "mountPath: /etc/leaderlock") {
		t.Fatalf("drop-in manifest:\n%s", dropin)
	}
	if !strings.Contains(lease, "resources: [leases]") || strings.Contains(lease, "LeaderLock") || strings.Contains(lease, "downwardAPI") {
		t.Fatalf("lease manifest:\n%s", lease)
	}
	for _, m := range []string{dropin, lease} {
		if strings.Contains(m, "\t") || !strings.Contains(m, "--metrics-bind-address=:8080") {
			t.Fatalf("manifest:\n%s", m)
		}
	}
}
