package main

// The report's sections of the price phase (price.go).

import (
	"fmt"
	"strings"
)

// costRatio is b/a as "N.N×", "∞" when a is 0 and b is not.
func costRatio(b, a float64) string {
	switch {
	case a == 0 && b == 0:
		return "—"
	case a == 0:
		return "∞"
	}
	return fmt.Sprintf("%.1f×", b/a)
}

func costRow(work, system string, c cost) string {
	return fmt.Sprintf("| %s | %s | %.2f | %d | %.0f | %.0f | %.0f |", work, system, c.apiCPU, c.revs, c.putBytes/1024, c.rxBytes/1024, c.writes)
}

func ratioRow(work string, ll, cg cost) string {
	return fmt.Sprintf("| %s | **client-go ÷ LeaderLock** | **%s** | %s | **%s** | %s | %s |", work,
		costRatio(cg.apiCPU, ll.apiCPU), costRatio(float64(cg.revs), float64(ll.revs)),
		costRatio(cg.putBytes, ll.putBytes), costRatio(cg.rxBytes, ll.rxBytes), costRatio(cg.writes, ll.writes))
}

func writePrice(w func(string, ...any)) {
	if len(res.price) == 0 {
		return
	}
	w("## 6. The apiserver's price of an election (phase `price`)")
	w("")
	w("Each size M: M locks × 3 candidates, LeaderLock (the controller above, M LeaderLocks over 3M pods the harness")
	w("plays the kubelet for) then client-go (3 elector processes × M LeaderElectors, 15s/10s/2s), in the same run on")
	w("the same control plane. What is measured over each window:")
	w("")
	w("* **apiserver CPU s** — kube-apiserver's utime+stime from `/proc/<pid>/stat`;")
	w("* **revisions** — the storage etcd's revision delta (one per write that reached etcd);")
	w("* **KiB put** — the storage etcd's `etcd_mvcc_total_put_size_in_bytes` delta: key+value bytes of every put,")
	w("  i.e. the bytes the apiserver wrote into its etcd;")
	w("* **KiB received** — the storage etcd's `etcd_network_client_grpc_received_bytes_total` delta: every gRPC request")
	w("  the apiserver sent it (writes, reads, watch and lease traffic);")
	w("* **apiserver writes** — `apiserver_request_total` deltas of POST/PUT/PATCH/APPLY/DELETE, every resource.")
	w("")
	w("Windows include everything the control plane did meanwhile (the apiserver's own lease and the harness's three")
	w("played node Leases, renewed every 10 s like kubelets': 0.3 writes/s) — the same background for both systems.")
	w("Elect: LeaderLock from the first LeaderLock POST (the harness's M creates are in the figures) until every status")
	w("holds and every pod is annotated, + 2 s; client-go from elector A's start (alone) until it printed M `acquired`.")
	w("Failover: LeaderLock from the last renewal of the node all holders run on until every lock shows another pod")
	w("annotated leader, + 2 s; client-go from `kill -9` of elector A (the holder of all M) until every Lease shows")
	w("another holderIdentity, + 2 s. Idle: a BENCH_IDLE_SECONDS window after the election (client-go's with followers")
	w("B and C running), less the background's rate (a window before both, with only the apiserver's own work and 3")
	w("played node Leases), × 3600 / window; a negative figure is noise around 0.")
	w("")
	for _, r := range res.price {
		f := func(c cost) cost { return c.per(r.m) }
		w("### M = %d, per 1,000 locks", r.m)
		w("")
		w("| work | system | apiserver CPU s | revisions | KiB put | KiB received | apiserver writes |")
		w("|---|---|---:|---:|---:|---:|---:|")
		base := r.ll[0]
		rows := func(work string, ll func(p *llPrice) cost, cg cost) {
			for _, p := range r.ll {
				w("%s", costRow(work, "LeaderLock, writes by "+modeName(p.mode), f(ll(p))))
			}
			w("%s", costRow(work, "client-go", f(cg)))
			w("%s", ratioRow(work, f(ll(base)), f(cg)))
			for _, p := range r.ll[1:] {
				w("%s", ratioRowNamed(work, modeName(p.mode)+" ÷ "+modeName(base.mode), f(ll(base)), f(ll(p))))
			}
		}
		rows("1,000 elected from empty", func(p *llPrice) cost { return p.elect }, r.cgElect)
		rows("1,000 holders replaced at once", func(p *llPrice) cost { return p.fail }, r.cgFail)
		w("%s", costRow("an idle hour: the background (not scaled)", "neither", r.background.perHour()))
		w("%s", costRow("an idle hour of 1,000 locks, less the background", "LeaderLock", f(base.idle.net(r.background)).perHour()))
		w("%s", costRow("an idle hour of 1,000 locks, less the background", "client-go", f(r.cgIdle.net(r.background)).perHour()))
		w("")
		w("* Windows: client-go elect %.1f s, failover %.1f s, idle %.0f s; LeaderLock idle %.0f s.", r.cgElect.secs, r.cgFail.secs, r.cgIdle.secs, base.idle.secs)
		for _, p := range r.ll {
			w("* LeaderLock, writes by %s: elect %.1f s, failover %.1f s. Writes (M = %d, not scaled) — elect: %s; failover: %s.",
				modeName(p.mode), p.elect.secs, p.fail.secs, r.m, orNone(p.elect.writesBy), orNone(p.fail.writesBy))
		}
		w("* client-go writes (not scaled) — elect: %s; failover: %s.", orNone(r.cgElect.writesBy), orNone(r.cgFail.writesBy))
		w("")
	}
	w("### Mass failover: every holder gone at once")
	w("")
	w("| system | M | locks moved | p50 ms | p99 ms | last ms | last − detection threshold |")
	w("|---|---:|---:|---:|---:|---:|---:|")
	for _, r := range res.price {
		for _, p := range r.ll {
			w("| LeaderLock (writes by %s): the holders' node Lease stops being renewed (`--node-lost-after` %s) | %d | %d of %d held there | %.0f | %.0f | %.0f | %.0f ms |",
				modeName(p.mode), r.nodeLostAfter, r.m, p.moved, p.heldOnLost, p.moves.P50, p.moves.P99, p.moves.Max, p.moves.Max-float64(r.nodeLostAfter.Milliseconds()))
		}
		w("| client-go: `kill -9` the process holding all M Leases (LeaseDuration %s) | %d | %d | %.0f | %.0f | %.0f | %.0f ms |",
			r.cgLeaseDuration, r.m, r.cgMoved, r.cgMoves.P50, r.cgMoves.P99, r.cgMoves.Max, r.cgMoves.Max-float64(r.cgLeaseDuration.Milliseconds()))
	}
	w("")
	w("* The clock starts at the node Lease's last renewal (its silence starts there) and at the kill; a lock counts")
	w("  as moved when a pods watch shows another of its pods annotated `leader` (a Leases watch shows another")
	w("  holderIdentity). Both detect the loss after 15 s by default: the last column is what each spends beyond it.")
	w("* The order the controller serves a lost node's LeaderLocks in: the node Lease watch hands all of them to the")
	w("  queue at once; kube-runtime's scheduler runs `--max-concurrent-reconciles` (16) at a time and keeps the rest")
	w("  in a hash set, taking the next in that set's iteration order — effectively random, neither FIFO nor by lock.")
	w("  One reconcile moves a lock completely (demote, etcd, promote, status, Events), so no lock waits twice; the")
	w("  p50-to-last spread is the queue draining at the apiserver's write rate, not first-served locks starved.")
	w("* Each LeaderLock row ran its own controller (`--namespace` of its phase, its own etcd), started for it; pods")
	w("  and status by merge patch is the default, by server-side apply the path before it")
	w("  (`LEADERLOCK_BENCH_WRITES=apply`, a bench-only switch).")
	w("")
}

func modeName(mode string) string {
	switch mode {
	case "merge":
		return "merge patch"
	case "apply":
		return "server-side apply"
	}
	return mode
}

func ratioRowNamed(work, name string, a, b cost) string {
	return fmt.Sprintf("| %s | **%s** | **%s** | %s | **%s** | %s | %s |", work, name,
		costRatio(b.apiCPU, a.apiCPU), costRatio(float64(b.revs), float64(a.revs)),
		costRatio(b.putBytes, a.putBytes), costRatio(b.rxBytes, a.rxBytes), costRatio(b.writes, a.writes))
}

// priceBench is the BENCH line's part for the price phase.
func priceBench() string {
	var b strings.Builder
	for _, r := range res.price {
		l, p, cg := label(r.m), r.ll[0], r.cgElect.per(r.m)
		fmt.Fprintf(&b, " price_%s_elect_cpu_s_per_1k leaderlock=%.2f clientgo=%.2f price_%s_fail_cpu_s_per_1k leaderlock=%.2f clientgo=%.2f",
			l, p.elect.per(r.m).apiCPU, cg.apiCPU, l, p.fail.per(r.m).apiCPU, r.cgFail.per(r.m).apiCPU)
		fmt.Fprintf(&b, " price_%s_elect_kib_put_per_1k leaderlock=%.0f clientgo=%.0f mass_failover_%s_last_ms leaderlock=%.0f clientgo=%.0f",
			l, p.elect.per(r.m).putBytes/1024, cg.putBytes/1024, l, p.moves.Max, r.cgMoves.Max)
		for _, q := range r.ll[1:] {
			fmt.Fprintf(&b, " price_%s_elect_cpu_s_per_1k_%s=%.2f", l, q.mode, q.elect.per(r.m).apiCPU)
		}
	}
	return b.String()
}
