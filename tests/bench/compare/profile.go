package main

// A CPU profile of kube-apiserver during the scale window: what the bottleneck spends its time on.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// profileGroup is a row of the report: the largest cumulative share of any function whose name
// contains one of match (the outermost such frame, so nested calls are not counted twice).
type profileGroup struct {
	label string
	match []string
}

// Groups are nested, not disjoint: a PATCH's field management and etcd update are inside it.
var profileGroups = []profileGroup{
	{"PATCH requests (merge patches of pods and status, finalizer patches), whole handler", []string{"handlers.(*patcher).patchResource"}},
	{"  of which field management (managedFields, structured-merge-diff)", []string{"managedfields/internal.(*FieldManager).Apply", "managedfields/internal.(*FieldManager).Update"}},
	{"  of which the etcd transaction", []string{"etcd/client/v3/kubernetes.Client.OptimisticPut"}},
	{"POST requests (Events), whole handler", []string{"createHandler"}},
	{"decoding request bodies into objects", []string{"serializer/versioning.(*codec).Decode"}},
	{"serving watches (the controller's, the harness's informers)", []string{"handlers.(*WatchServer).HandleHTTP"}},
	{"authenticating requests (client certificates)", []string{"union.(*unionAuthRequestHandler).AuthenticateRequest"}},
	{"Go garbage collection (background mark workers)", []string{"runtime.gcBgMarkWorker"}},
}

// apiserverProfile samples kube-apiserver's CPU for d through its /debug/pprof endpoint (as the
// harness's cluster-admin), keeps the profile in logDir, and returns each group's share.
func (k *kube) apiserverProfile(d time.Duration, name string) (map[string]float64, error) {
	raw, err := k.cs.CoreV1().RESTClient().Get().AbsPath("/debug/pprof/profile").
		Param("seconds", strconv.Itoa(int(d.Seconds()))).Timeout(d + time.Minute).DoRaw(context.Background())
	if err != nil {
		return nil, fmt.Errorf("GET /debug/pprof/profile: %w", err)
	}
	path := filepath.Join(logDir, name+".pprof")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		return nil, err
	}
	out, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=100000", path).Output()
	if err != nil {
		return nil, fmt.Errorf("go tool pprof %s: %w", path, err)
	}
	return groupShares(out), nil
}

// groupShares reads `pprof -top -cum` output: "flat flat% sum% cum cum% name" lines, and the
// header's "Total samples = 26.20s (130.94%)" as the group "cores" (busy cores × 100).
func groupShares(top []byte) map[string]float64 {
	shares := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(top))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if _, total, ok := strings.Cut(sc.Text(), "Total samples = "); ok {
			if _, pct, ok := strings.Cut(total, "("); ok {
				shares["cores"], _ = strconv.ParseFloat(strings.TrimSuffix(pct, "%)"), 64)
			}
		}
		f := strings.Fields(sc.Text())
		if len(f) < 6 || !strings.HasSuffix(f[4], "%") {
			continue
		}
		cum, err := strconv.ParseFloat(strings.TrimSuffix(f[4], "%"), 64)
		if err != nil {
			continue
		}
		fn := strings.Join(f[5:], " ")
		for _, g := range profileGroups {
			for _, m := range g.match {
				if strings.Contains(fn, m) && cum > shares[g.label] {
					shares[g.label] = cum
				}
			}
		}
	}
	return shares
}
