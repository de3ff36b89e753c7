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

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// Files that lagged their annotation by more than 2 s or 10 s are counted per half, for the new
// holder's file and the demoted holder's, and the E2E line carries the resync-on half without a
// prefix and the off half's p99 and 10 s count with one.
func TestLateFilesAreCountedPerHalfAndReported(t *testing.T) {
	r := &results{kubelet: "v1.36.3", kubeletConfig: "default", resyncOn: "2s", blocks: 4}
	r.add("graceful/on", sample{Gap: ms(200), Annotation: ms(100), File: ms(300), HasAnnotation: true, HasFile: true, ResyncWrites: 2})
	r.add("graceful/on", sample{Gap: ms(900), Annotation: ms(100), File: ms(3100), HasAnnotation: true, HasFile: true, ResyncWrites: 1})
	r.add("crash/on", sample{Gap: ms(1000), OldAnnotation: ms(500), OldFile: ms(3600), HasOldAnnotation: true, HasOldFile: true, Restarted: true, ResyncWrites: 1})
	r.add("notready/on", sample{Annotation: ms(0), HasAnnotation: true}) // file never seen turning: not counted
	r.add("graceful/off", sample{Gap: ms(80000), Annotation: ms(100), File: ms(80000), HasAnnotation: true, HasFile: true})
	r.add("notready/off", sample{OldAnnotation: ms(0), OldFile: ms(67000), HasOldAnnotation: true, HasOldFile: true, Overlap: ms(67000)})
	r.add("clientgo", sample{Gap: ms(600)})
	on := r.filesLate(half(true)...)
	if on.seen != 3 || on.over2 != 2 || on.over10 != 0 || on.longest != ms(3100) {
		t.Fatalf("resync on: %+v; want 3 seen, 2 over 2 s, 0 over 10 s, longest 3.1s", on)
	}
	off := r.filesLate(half(false)...)
	if off.seen != 2 || off.over10 != 2 || off.longest != ms(79900) {
		t.Fatalf("resync off: %+v; want 2 seen, both over 10 s, longest 79.9s", off)
	}
	line := r.summary()
	for _, want := range []string{
		"E2E kubelet=v1.36.3 kubelet_config=default handovers=7 ", "job_gap_p50_ms=200 ", "job_gap_p99_ms=900 ",
		"crash_p99_ms=1000 ", "overlap_max_ms=0 ", "clientgo_job_gap_p99_ms=600 ", "files_late_2s=2 ", "files_late_10s=0 ",
		"resync_writes_per_handover=1.00 ", "off_job_gap_p99_ms=80000 ", "off_files_late_10s=2 ", "violations=0",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("E2E line lacks %q:\n%s", want, line)
		}
	}
	md := r.markdown("plot.png")
	for _, want := range []string{
		"**with its default configuration**", "*Resync on* is the chart as shipped, `controller.resyncAfter: \"2s\"`",
		"*Resync off* is `controller.resyncAfter: \"0\"`", "4 alternating blocks",
		"| LeaderLock: leader pod deleted (graceful) | on | 2 | 200 |",
		"| LeaderLock: leader container killed (SIGKILL) | on | 0 | – | – | – | 1 | 1 | 0 | 3100 | 1.00 | 1 of 1 |",
		"| LeaderLock: leader pod deleted (graceful) | off | 1 | 1 | 1 | 79900 |", "| LeaderLock: leader container killed (SIGKILL) | off | 0 | – | – | – | 0 | – | – | – | – | – |",
		"resync on: 2 of 3 later than 2 s, 0 later than 5 s, 0 later than 10 s (longest 3.1s)",
		"resync off: 2 of 2, 2, 2", "Resync writes: 4 in 4 handovers with resync on, 0 in 2 with it off",
		"resync on (solid) and off (dashed)", line,
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	r.kubeletConfig = "syncFrequency=5s"
	if md := r.markdown(""); !strings.Contains(md, "syncFrequency 5s set in its config") || !strings.Contains(md, "not the kubelet's default") {
		t.Errorf("a tuned kubelet is not called out:\n%s", md)
	}
}

func TestKubeletConfigNamesASetSyncFrequency(t *testing.T) {
	if got := kubeletConfigOf("kind: KubeletConfiguration\nfailSwapOn: false\n"); got != "default" {
		t.Errorf("no syncFrequency: %q, want default", got)
	}
	if got := kubeletConfigOf("failSwapOn: false\nsyncFrequency: \"5s\"\n"); got != "syncFrequency=5s" {
		t.Errorf("syncFrequency set: %q, want syncFrequency=5s", got)
	}
}

// Each kind's count is split over the blocks, on first and in turn, the halves within one of
// each other, and the kinds spread through each block rather than run one after another.
func TestABScheduleSplitsAndInterleaves(t *testing.T) {
	blocks := abSchedule(200, 40, 40, 4)
	if len(blocks) != 4 {
		t.Fatalf("%d blocks, want 4", len(blocks))
	}
	total := map[string]map[bool]int{"graceful": {}, "crash": {}, "notready": {}}
	for i, b := range blocks {
		if b.On != (i%2 == 0) {
			t.Errorf("block %d on=%v", i, b.On)
		}
		for _, k := range b.Kinds {
			total[k][b.On]++
		}
	}
	for k, want := range map[string]int{"graceful": 100, "crash": 20, "notready": 20} {
		if total[k][true] != want || total[k][false] != want {
			t.Errorf("%s: on %d off %d, want %d each", k, total[k][true], total[k][false], want)
		}
	}
	got := strings.Join(blocks[0].Kinds[:7], " ")
	if got != "graceful graceful crash graceful notready graceful graceful" {
		t.Errorf("block 0 starts %q", got)
	}
	for i := 1; i < len(blocks[0].Kinds); i++ {
		if k := blocks[0].Kinds[i]; k != "graceful" && k == blocks[0].Kinds[i-1] {
			t.Errorf("two %s in a row at %d: %v", k, i, blocks[0].Kinds)
		}
	}
	small := abSchedule(5, 1, 0, 2)
	if len(small[0].Kinds) != 4 || len(small[1].Kinds) != 2 || strings.Count(strings.Join(small[0].Kinds, " "), "crash") != 1 {
		t.Errorf("remainders go to the first blocks: %+v", small)
	}
}

// The pod watch tells the controller's resync writes (only leaderlock.dev/roles.resync changed)
// from the role writes, and knows when a pod's leadership changed and was resynced.
func TestWatchCountsResyncOnlyWrites(t *testing.T) {
	w := &roleWatch{annLeader: map[string]time.Duration{}, annLeft: map[string]time.Duration{}, leadChange: map[string]time.Duration{},
		ours: map[string]map[string]string{}, gone: map[string]bool{}}
	other := map[string]string{"other.io/x": "1"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{"other.io/x": "1"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	w.observe("ADDED", "a", with(roleKey, "leader", tokenKey, "5", resyncKey, "d5"), ms(0))
	w.observe("ADDED", "b", with(roleKey, "standby"), ms(0))
	w.observe("MODIFIED", "a", with(resyncKey, "d5"), ms(1000))                  // demoted: keys removed, digest kept
	w.observe("MODIFIED", "b", with(roleKey, "leader", tokenKey, "6"), ms(1100)) // promoted
	w.observe("MODIFIED", "b", with(roleKey, "leader", tokenKey, "6"), ms(1200)) // status only: nothing of ours
	if w.resynced("b", ms(500)) {
		t.Fatal("b resynced before any resync write")
	}
	w.observe("MODIFIED", "b", with(roleKey, "leader", tokenKey, "6", resyncKey, "d6"), ms(3100)) // resync
	w.observe("MODIFIED", "a", with(roleKey, "standby"), ms(3200))                                // resync with another change
	if n := w.resyncWrites(ms(500), ms(4000)); n != 1 {
		t.Fatalf("%d resync-only writes, want 1 (b's; a's came with its standby)", n)
	}
	if !w.resynced("a", ms(500)) || !w.resynced("b", ms(500)) {
		t.Fatal("a and b both had their resync")
	}
	if w.resynced("b", ms(2000)) {
		t.Fatal("b's leadership did not change after 2 s")
	}
	if got := w.annLeft["a"]; got != ms(1000) {
		t.Errorf("a left leader at %v, want 1s", got)
	}
	if got := w.annLeader["b"]; got != ms(1100) {
		t.Errorf("b turned leader at %v, want 1.1s", got)
	}
	w.observe("DELETED", "a", other, ms(5000))
	w.observe("ADDED", "b", with(roleKey, "leader", tokenKey, "6"), ms(6000)) // relist after a restarted watch
	if n := w.resyncWrites(0, ms(7000)); n != 1 {
		t.Fatalf("a relist counted as a resync write: %d", n)
	}
	if w.twoLeaders != 0 {
		t.Fatalf("two leaders counted %d times", w.twoLeaders)
	}
	w.observe("MODIFIED", "c", with(roleKey, "leader"), ms(7000))
	if w.twoLeaders != 1 {
		t.Fatalf("two leaders not counted")
	}
}
