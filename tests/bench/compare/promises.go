package main

// What LeaderLock promises, checked after the report is written: make bench fails when one is
// broken.

import "fmt"

// promised are the figures LeaderLock guarantees, not merely targets: each must be exactly 0.
// The timing and memory targets are reported, not enforced (2 shared cores are too noisy for a gate).
var promised = []struct {
	what string
	get  func(r *results) string
}{
	{"etcd revisions per minute while idle", func(r *results) string { return idleFig(r, func(i *idleResult) string { return i.leaderlock }) }},
	{"apiserver writes per minute while idle", func(r *results) string {
		return idleFig(r, func(i *idleResult) string { return i.apiWritesLeaderlock })
	}},
	{"holder changes across a controller restart", func(r *results) string {
		return restartFig(r, func(x *restartResult) string { return x.holderChanges })
	}},
	{"pod role changes across a controller restart", func(r *results) string { return restartFig(r, func(x *restartResult) string { return x.roleChanges }) }},
	{"planned handovers with two pods annotated leader at once", handoverTwoLeaders},
	{"etcd writes while idle with two clusters sharing a lock", func(r *results) string {
		if r.multi == nil {
			return ""
		}
		return r.multi.idleWrites
	}},
	{"lock-key writes across a controller restart", func(r *results) string { return restartFig(r, func(x *restartResult) string { return x.lockWrites }) }},
}

// brokenPromises lists the promised figures that were measured and are not 0 (a skipped phase
// measures nothing).
func brokenPromises(r *results) []string {
	var broken []string
	for _, p := range promised {
		if v := p.get(r); v != "" && v != "0" {
			broken = append(broken, fmt.Sprintf("%s = %s, must be 0", p.what, v))
		}
	}
	return broken
}
