package main

import (
	"strings"
	"testing"
)

func TestBrokenPromisesNamesEveryNonZeroFigureAndSkipsUnmeasuredOnes(t *testing.T) {
	ok := map[string]string{"idle_leaderlock": "0", "idle_api_writes_leaderlock": "0", "restart_holder_changes": "0",
		"restart_role_changes": "0", "restart_lock_writes": "0", "idle_trylock": "24000"}
	if b := brokenPromises(ok); len(b) != 0 {
		t.Fatalf("a clean run broke nothing, got %q", b)
	}
	if b := brokenPromises(map[string]string{}); len(b) != 0 {
		t.Fatalf("skipped phases measure nothing, got %q", b)
	}
	bad := map[string]string{"idle_leaderlock": "2", "restart_holder_changes": "0", "restart_lock_writes": "3"}
	b := brokenPromises(bad)
	if len(b) != 2 || !strings.Contains(b[0], "idle = 2") || !strings.Contains(b[1], "restart = 3") {
		t.Fatalf("want the idle revisions and the restart lock writes, got %q", b)
	}
}
