package main

import (
	"strings"
	"testing"
)

func TestBrokenPromisesNamesEveryNonZeroFigureAndSkipsUnmeasuredOnes(t *testing.T) {
	ok := &results{
		idle:    &idleResult{leaderlock: "0", apiWritesLeaderlock: "0", trylock: "24000"},
		restart: &restartResult{holderChanges: "0", roleChanges: "0", lockWrites: "0"},
	}
	if b := brokenPromises(ok); len(b) != 0 {
		t.Fatalf("a clean run broke nothing, got %q", b)
	}
	if b := brokenPromises(&results{}); len(b) != 0 {
		t.Fatalf("skipped phases measure nothing, got %q", b)
	}
	bad := &results{idle: &idleResult{leaderlock: "2"}, restart: &restartResult{holderChanges: "0", lockWrites: "3"}, multi: &multiResult{idleWrites: "1"}}
	b := brokenPromises(bad)
	if len(b) != 3 || !strings.Contains(b[0], "idle = 2") || !strings.Contains(b[1], "two clusters sharing a lock = 1") || !strings.Contains(b[2], "restart = 3") {
		t.Fatalf("want the idle revisions, the two clusters' idle writes and the restart lock writes, got %q", b)
	}
}
