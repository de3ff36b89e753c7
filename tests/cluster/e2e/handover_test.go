package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeLog(t *testing.T, dir, pod, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, pod), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A crashed holder whose restarted container starts its job again with its old token, while
// the new holder starts with a larger one: one restart, no violation, and the overlap is the
// time both jobs ran.
func TestSettleCountsTheOldHoldersRestartAndTheOverlap(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, "old", "start 10.00 6\nstart 12.00 6\nstop 12.50\n")
	writeLog(t, dir, "new", "start 12.20 7\n")
	w := &workloadRun{joblog: dir}
	w.killed = []jobEvent{{Pod: "old", At: 11 * time.Second}}
	newStart := jobEvent{Pod: "new", Start: true, At: 12200 * time.Millisecond, Token: 7}
	overlap := w.settle("old", 6, newStart, 11*time.Second, 20*time.Second)
	if w.restarts != 1 || w.extra != 0 {
		t.Fatalf("restarts %d extra %d, want 1 and 0", w.restarts, w.extra)
	}
	if overlap != 300*time.Millisecond {
		t.Fatalf("overlap %v, want 300ms", overlap)
	}
}

// A third pod starting its job during a handover is a violation.
func TestSettleCountsAStartInAThirdPod(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, "old", "start 1.00 5\nstop 2.00\n")
	writeLog(t, dir, "new", "start 2.10 6\n")
	writeLog(t, dir, "other", "start 2.20 7\n")
	w := &workloadRun{joblog: dir}
	newStart := jobEvent{Pod: "new", Start: true, At: 2100 * time.Millisecond, Token: 6}
	w.settle("old", 5, newStart, 1500*time.Millisecond, 3*time.Second)
	if w.extra != 1 {
		t.Fatalf("extra %d, want 1", w.extra)
	}
}

func TestRunningFollowsStartsAndStops(t *testing.T) {
	ev := []jobEvent{{Pod: "a", Start: true, Token: 1}, {Pod: "a"}, {Pod: "b", Start: true, Token: 2}}
	r := running(ev)
	if len(r) != 1 || r["b"] != 2 {
		t.Fatalf("running %v, want only b with token 2", r)
	}
}

func TestPercentileIsNearestRank(t *testing.T) {
	v := []float64{10, 20, 30, 40, 50, 60, 70, 80, 90, 100}
	if got := pct(v, 50); got != 50 {
		t.Fatalf("p50 %v, want 50", got)
	}
	if got := pct(v, 99); got != 100 {
		t.Fatalf("p99 %v, want 100", got)
	}
}

// A file that lagged its annotation by more than 2 s is a lost remount: the report counts those
// across the LeaderLock kinds and names the longest, and says what bounds it.
func TestLateFilesAreCountedAndReported(t *testing.T) {
	r := &results{kubelet: "v1.36.3", syncFreq: "5s"}
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	r.add("graceful", sample{Annotation: ms(100), File: ms(300), HasAnnotation: true, HasFile: true})
	r.add("crash", sample{Annotation: ms(600), File: ms(3600), HasAnnotation: true, HasFile: true})
	r.add("notready", sample{Annotation: ms(0), File: ms(80000), HasAnnotation: true, HasFile: true})
	r.add("notready", sample{Annotation: ms(0), HasAnnotation: true}) // file never seen turning: not counted
	r.add("clientgo", sample{})
	n, of, longest := r.lateFiles()
	if n != 2 || of != 3 || longest != ms(80000) {
		t.Fatalf("late files %d of %d, longest %v; want 2 of 3, 80s", n, of, longest)
	}
	md := r.markdown("")
	for _, want := range []string{"(`syncFrequency` 5s)", "more than 2s in 2 of 3 LeaderLock handovers (longest 1m20s)"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}
