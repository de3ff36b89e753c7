package main

import (
	"strings"
	"testing"
	"time"
)

func TestLossKindsInterleaveEveryFault(t *testing.T) {
	got := strings.Join(lossKinds(2, 2, 1), ",")
	if got != "hang,crash,kubelet,hang,crash" {
		t.Fatalf("lossKinds(2, 2, 1) = %s", got)
	}
}

func lossFixture() *lossResults {
	moved := func(ms int) lossSample {
		return lossSample{Moved: true, FromFault: time.Duration(ms) * time.Millisecond, Stopped: true, Overlap: 900 * time.Millisecond}
	}
	return &lossResults{
		rounds: 4, overlapCap: 30 * time.Second, victim: "127.0.0.2", keep: "127.0.0.1",
		samples: map[string][]lossSample{
			lossKey("leaderlock", lossHang, ""):  {moved(16000), moved(17000)},
			lossKey("leaderlock", lossCrash, ""): {moved(15500), {Moved: true, FromFault: 52 * time.Second, SameNode: 1}},
			lossKey("clientgo", lossHang, ""):    {moved(17500), moved(18000)},
			lossKey("clientgo", lossCrash, ""):   {moved(16500), moved(19000)},
			// The kubelet crash: one old job still running at the cap, one stopped.
			lossKey("leaderlock", lossKubelet, ""): {{Moved: true, FromFault: 16 * time.Second, Overlap: 30 * time.Second},
				{Moved: true, FromFault: 16 * time.Second, Stopped: true, Overlap: 2 * time.Second}},
			// Tuned rounds never reach the E2E line.
			lossKey("leaderlock", lossHang, settingTuned): {moved(1)},
		},
	}
}

func TestLossSummaryTakesTheDefaultRowsOnly(t *testing.T) {
	got := lossFixture().summary()
	for _, want := range []string{"node_loss_p50_ms=16000", "node_loss_p99_ms=52000", "clientgo_node_loss_p99_ms=19000",
		"thaw_overlap_max_ms=900", "kubelet_crash_capped=1/2", "node_loss_same_node_successors=1", "node_loss_not_moved=0"} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %s: %s", want, got)
		}
	}
}

func TestLossMarkdownMarksTunedRowsAndCountsSameNodeRounds(t *testing.T) {
	l := lossFixture()
	l.tunedLostAfter = 4
	md := l.markdown("v1.36.3", "E2E x")
	if !strings.HasPrefix(md, lossSectionBegin) || !strings.HasSuffix(strings.TrimSpace(md), lossSectionEnd) {
		t.Fatalf("section markers missing:\n%s", md)
	}
	if !strings.Contains(md, "| node hung (every process frozen) | **tuned, not defaults:**") || !strings.Contains(md, "give no published figure") {
		t.Errorf("tuned rows not marked:\n%s", md)
	}
	// The crash row: one of two rounds had a same-node successor.
	crash := 0
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "| node crashed") && strings.Contains(line, "| LeaderLock |") {
			crash++
			if !strings.HasSuffix(line, "| 1 | 0 |") {
				t.Errorf("crash row: %s", line)
			}
		}
	}
	if crash != 1 {
		t.Errorf("%d LeaderLock crash rows, want 1 (failover only)", crash)
	}
}

func TestArgIndexFindsTheFlagsValue(t *testing.T) {
	if i := argIndex([]string{"kubelet", "--config", "a.yaml", "--v", "1"}, "--config"); i != 2 {
		t.Fatalf("argIndex = %d", i)
	}
}
