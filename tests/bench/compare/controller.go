package main

// The `leaderlock controller` process under test, with its log read line by line so the harness
// knows when it became active and which LeaderLocks it reconciled (debug line "reconciled").

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// electionTTL is generous: on 2 shared cores a 2-3 s election lease was lost under the 1k load
// (the controller exits then, by design), which would measure the machine, not LeaderLock.
var electionTTL = envStr("BENCH_ELECTION_TTL", "10")

type controller struct {
	p          *proc
	mu         sync.Mutex
	started    time.Time
	activeAt   time.Time
	firstRecAt time.Time
	reconciled map[string]time.Time // "ns/name" -> first reconcile after becoming active
}

func startController(bin, endpoint string, gen int) *controller {
	return launchController(bin, fmt.Sprintf("controller-%d", gen), endpoint, cfg.kubeconfig, "--instance", fmt.Sprintf("bench-%d", gen))
}

// startControllerAs runs cfg.controllerBin as name against the cluster of kubeconfig, with extra flags.
func startControllerAs(name, endpoint, kubeconfig string, extra ...string) *controller {
	return launchController(cfg.controllerBin, name, endpoint, kubeconfig, append([]string{"--instance", name}, extra...)...)
}

func launchController(bin, name, endpoint, kubeconfig string, extra ...string) *controller {
	ch := make(chan line, 1024)
	c := &controller{started: time.Now(), reconciled: map[string]time.Time{}}
	// exec keeps the pid the controller's; 2>&1 gives us its tracing output line by line.
	args := append([]string{"-c", `k="$1"; shift; LEADERLOCK_LOG_LEVEL=info,leaderlock=debug KUBECONFIG="$k" exec "$0" "$@" 2>&1`, bin, kubeconfig,
		"controller", "--etcd-endpoints", endpoint, "--probe-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--election-ttl", electionTTL}, extra...)
	c.p = start(name, ch, "/bin/sh", args...)
	f, err := os.Create(filepath.Join(logDir, name+".out"))
	must(err)
	go func() {
		defer f.Close()
		for l := range ch {
			fmt.Fprintln(f, l.text)
			c.observe(l)
		}
	}()
	return c
}

func (c *controller) observe(l line) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case strings.Contains(l.text, "active: this replica reconciles"):
		if c.activeAt.IsZero() {
			c.activeAt = l.at
		}
	case strings.Contains(l.text, " reconciled") && !c.activeAt.IsZero():
		name, ns := field(l.text, "leaderlock="), field(l.text, "namespace=")
		if c.firstRecAt.IsZero() {
			c.firstRecAt = l.at
		}
		if _, ok := c.reconciled[ns+"/"+name]; !ok {
			c.reconciled[ns+"/"+name] = l.at
		}
	}
}

func field(s, key string) string {
	i := strings.Index(s, key)
	if i < 0 {
		return ""
	}
	v := s[i+len(key):]
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return strings.Trim(v, `"`)
}

// waitFor polls the parsed log state (in memory, every 10 ms) until cond holds or timeout.
func (c *controller) waitFor(what string, timeout time.Duration, cond func(c *controller) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		ok := cond(c)
		c.mu.Unlock()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for the controller: %s (log in %s)", timeout, what, logDir)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// reconciledIn counts LeaderLocks of ns reconciled since the controller became active, and
// returns the time of the last of them.
func (c *controller) reconciledIn(ns string) (int, time.Time) {
	n, last := 0, time.Time{}
	for k, at := range c.reconciled {
		if strings.HasPrefix(k, ns+"/") {
			n++
			if at.After(last) {
				last = at
			}
		}
	}
	return n, last
}

// alive fails the run at once if the controller exited (e.g. it lost its election lease).
func (c *controller) alive() {
	select {
	case <-c.p.done:
		fatalf("the controller exited; see %s/%s.out", logDir, c.p.name)
	default:
	}
}

// waitTracker is t.wait in 2 s slices, checking between them that the controller still runs.
func (c *controller) waitTracker(t *tracker, what string, timeout time.Duration, cond func(t *tracker) bool) time.Time {
	deadline := time.Now().Add(timeout)
	for {
		c.alive()
		at, err := t.wait(what, 2*time.Second, cond)
		if err == nil {
			return at
		}
		if time.Now().After(deadline) {
			fatalf("timed out after %s waiting for %s", timeout, what)
		}
	}
}
