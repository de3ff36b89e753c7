package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The idle window of the Go phase counts, for each variant, what the apiserver receives while
// nothing happens, two ways:
//   - client side: the example's own requests, from client-go's rest_client_requests_total
//     (method label) that each replica serves on :8080, read through the apiserver's pod proxy
//     at both ends of the window (a read, not one of the example's requests);
//   - server side: every change of an object in the variant's namespace (Leases, Pods, Events,
//     ConfigMaps, LeaderLocks, whoever wrote it), replayed after the window from a watch that
//     starts at the resourceVersion listed at its start and counted up to the one listed at its
//     end (resourceVersions compared as numbers: etcd revisions, as this apiserver's are).

// idleFigures is one variant's idle window.
type idleFigures struct {
	// Writes and Requests: the example's own requests (POST, PUT, PATCH, DELETE; and all) in
	// the window, summed over its replicas.
	Writes, Requests int
	// Changes: object changes in the namespace by resource.
	Changes map[string]int
	Window  time.Duration
}

func (f idleFigures) perMinute(n int) float64 {
	if f.Window <= 0 {
		return 0
	}
	return float64(n) * float64(time.Minute) / float64(f.Window)
}

func (f idleFigures) changes() int {
	n := 0
	for _, c := range f.Changes {
		n += c
	}
	return n
}

// idleResources are the API paths (under /api or /apis, without the namespace part) whose
// objects an election could write.
var idleResources = []struct{ Name, Group string }{
	{"leases", "apis/coordination.k8s.io/v1"},
	{"pods", "api/v1"},
	{"events", "api/v1"},
	{"configmaps", "api/v1"},
	{"leaderlocks", "apis/leaderlock.dev/v1alpha1"},
}

func resourcePath(group, ns, name string) string {
	return "/" + group + "/namespaces/" + ns + "/" + name
}

// requestCounts is a process's rest_client_requests_total by method.
type requestCounts map[string]int

// parseRequestCounts reads rest_client_requests_total from a Prometheus text page, summed by
// method over codes and hosts.
func parseRequestCounts(page string) requestCounts {
	c := requestCounts{}
	for _, line := range strings.Split(page, "\n") {
		rest, ok := strings.CutPrefix(line, "rest_client_requests_total{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		method := ""
		for _, l := range strings.Split(labels, ",") {
			if m, ok := strings.CutPrefix(l, `method="`); ok {
				method = strings.TrimSuffix(m, `"`)
			}
		}
		c[method] += int(v)
	}
	return c
}

// writes and all: the counts of the write methods, and of every method.
func (c requestCounts) split() (writes, all int) {
	for m, n := range c {
		all += n
		switch m {
		case "POST", "PUT", "PATCH", "DELETE":
			writes += n
		}
	}
	return writes, all
}

// scrape reads every replica's request counts, keyed by pod and its container's ID (a
// restarted container starts its counter again).
func scrape(ns string) map[string]requestCounts {
	out := map[string]requestCounts{}
	for _, p := range listPods(ns, goLock) {
		page, err := kubectl("get", "--raw", "/api/v1/namespaces/"+ns+"/pods/"+p.Name+":8080/proxy/metrics")
		if err != nil {
			fail("reading %s/%s's metrics: %v", ns, p.Name, err)
		}
		out[p.Name+"/"+p.ContainerID] = parseRequestCounts(page)
	}
	return out
}

// listRV is the resourceVersion of a list of one resource in ns: the store's revision now.
func listRV(path string) uint64 {
	var l struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
	}
	out := mustKubectl("get", "--raw", path+"?limit=1")
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		fail("list %s: %v", path, err)
	}
	rv, err := strconv.ParseUint(l.Metadata.ResourceVersion, 10, 64)
	if err != nil {
		fail("list %s: resourceVersion %q is not a number", path, l.Metadata.ResourceVersion)
	}
	return rv
}

// changesBetween replays the watch of path from rv0 and counts the events of objects whose
// resourceVersion is in (rv0, rv1]. The apiserver ends the watch after 1 s; rv1 was listed
// before, so its events come in the replay.
func changesBetween(path string, rv0, rv1 uint64) int {
	out := mustKubectl("get", "--raw", fmt.Sprintf("%s?watch=1&resourceVersion=%d&timeoutSeconds=1", path, rv0))
	n, err := countWatchEvents(out, rv0, rv1)
	if err != nil {
		fail("replaying the watch of %s from resourceVersion %d: %v", path, rv0, err)
	}
	return n
}

// countWatchEvents counts the events of a watch stream whose object's resourceVersion is in
// (rv0, rv1]; an ERROR event (e.g. 410 Gone: rv0 left the watch cache) is an error.
func countWatchEvents(stream string, rv0, rv1 uint64) (int, error) {
	dec := json.NewDecoder(bufio.NewReader(strings.NewReader(stream)))
	n := 0
	for dec.More() {
		var ev struct {
			Type   string `json:"type"`
			Object struct {
				Message  string `json:"message"`
				Metadata struct {
					ResourceVersion string `json:"resourceVersion"`
				} `json:"metadata"`
			} `json:"object"`
		}
		if err := dec.Decode(&ev); err != nil {
			return n, err
		}
		if ev.Type == "ERROR" {
			return n, fmt.Errorf("watch error: %s", ev.Object.Message)
		}
		rv, err := strconv.ParseUint(ev.Object.Metadata.ResourceVersion, 10, 64)
		if err == nil && rv > rv0 && rv <= rv1 {
			n++
		}
	}
	return n, nil
}

// idleEnd is what one end of the window reads of a variant: its replicas' request counts and
// each resource's list resourceVersion, and when.
type idleEnd struct {
	counts map[string]requestCounts
	rv     map[string]uint64
	at     time.Time
}

func readIdleEnd(ns string) idleEnd {
	e := idleEnd{counts: scrape(ns), rv: map[string]uint64{}}
	for _, r := range idleResources {
		e.rv[r.Name] = listRV(resourcePath(r.Group, ns, r.Name))
	}
	e.at = time.Now()
	return e
}

// measureIdle runs the idle window over every variant at once: both ends are read for all
// variants in turn (a few reads each), and the watches replayed only after the window closed.
func measureIdle(runs map[string]*goRun, window time.Duration) map[string]idleFigures {
	begins, ends := map[string]idleEnd{}, map[string]idleEnd{}
	for _, v := range goVariants {
		begins[v.Name] = readIdleEnd(runs[v.Name].ns)
	}
	logf("go-controller: idle window of %s", window)
	time.Sleep(window) // the measurement itself, not a wait for a condition
	for _, v := range goVariants {
		ends[v.Name] = readIdleEnd(runs[v.Name].ns)
	}
	out := map[string]idleFigures{}
	for _, v := range goVariants {
		g, b, e := runs[v.Name], begins[v.Name], ends[v.Name]
		f := idleFigures{Changes: map[string]int{}, Window: e.at.Sub(b.at)}
		for key, c0 := range b.counts {
			c1, ok := e.counts[key]
			if !ok {
				fail("%s: %s was replaced during the idle window", g.ns, key)
			}
			w0, a0 := c0.split()
			w1, a1 := c1.split()
			f.Writes += w1 - w0
			f.Requests += a1 - a0
		}
		for _, r := range idleResources {
			f.Changes[r.Name] = changesBetween(resourcePath(r.Group, g.ns, r.Name), b.rv[r.Name], e.rv[r.Name])
		}
		logf("%s idle: %d writes and %d requests by the example, object changes %v, in %s", g.ns, f.Writes, f.Requests, f.Changes, f.Window.Round(time.Millisecond))
		out[v.Name] = f
	}
	return out
}
