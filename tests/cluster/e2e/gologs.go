package main

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// The Go controller example (examples/go-controller) logs one JSON line per event (zap, through
// controller-runtime): "leading" when its manager starts the leader-only runnables, "stopped
// leading" when it stops them, "reconciled" for each reconcile, each with the wall-clock time in
// its "at" field. The harness reads those lines from the files the kubelet keeps on the node
// (podLogsDir/<ns>_<pod>_<uid>/<container>/<restarts>.log, CRI format), so that reading them
// costs the apiserver nothing. One file is one process: a restarted container writes a new one.

// termLine is what the harness takes from one log line of the example.
type termLine struct {
	Msg   string
	At    time.Time
	Token string
}

// parseTermLine reads one CRI log line ("<time> <stream> <F|P> <content>") whose content is a
// JSON line of the example; ok is false for anything else (partial lines, other messages).
func parseTermLine(line string) (termLine, bool) {
	parts := strings.SplitN(line, " ", 4)
	if len(parts) < 4 || parts[2] != "F" {
		return termLine{}, false
	}
	var j struct {
		Msg   string `json:"msg"`
		At    string `json:"at"`
		Token string `json:"token"`
	}
	if json.Unmarshal([]byte(parts[3]), &j) != nil {
		return termLine{}, false
	}
	switch j.Msg {
	case "leading", "stopped leading", "reconciled":
	default:
		return termLine{}, false
	}
	at, err := time.Parse(time.RFC3339Nano, j.At)
	if err != nil {
		return termLine{}, false
	}
	return termLine{Msg: j.Msg, At: at, Token: j.Token}, true
}

// proc is one process of the example: its leading term (at most one: controller-runtime's
// manager exits when it stops leading) and its first reconcile.
type proc struct {
	Key, Pod       string // Key: pod name and restart count ("pod#0")
	Leading        time.Time
	Stopped        time.Time // zero: not seen (still leading, or killed)
	Token          string
	FirstReconcile time.Time
	Reconciles     int
}

// start is when the process began acting as leader: its "leading" line or its first reconcile,
// whichever came first (the manager starts both runnables at once). Zero: never.
func (p *proc) start() time.Time {
	switch {
	case p.Leading.IsZero():
		return p.FirstReconcile
	case p.FirstReconcile.IsZero() || p.Leading.Before(p.FirstReconcile):
		return p.Leading
	default:
		return p.FirstReconcile
	}
}

func (p *proc) add(l termLine) {
	switch l.Msg {
	case "leading":
		p.Leading, p.Token = l.At, l.Token
	case "stopped leading":
		p.Stopped = l.At
	case "reconciled":
		if p.FirstReconcile.IsZero() {
			p.FirstReconcile = l.At
		}
		p.Reconciles++
	}
}

// logTail follows the example's log files of one namespace on the node, polled every 20 ms
// (a file stays until the kubelet removes the deleted pod, seconds after its process ended).
type logTail struct {
	mu     sync.Mutex
	procs  map[string]*proc
	offset map[string]int64     // file -> bytes consumed (whole lines only)
	ended  map[string]time.Time // process -> when its term ended, per the harness (endAt)
}

func newLogTail() *logTail {
	return &logTail{procs: map[string]*proc{}, offset: map[string]int64{}, ended: map[string]time.Time{}}
}

// follow polls dir (the node's podLogsDir) for ns's pods until stop is closed.
func (t *logTail) follow(dir, ns string, stop <-chan struct{}) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			t.scan(dir, ns)
		}
	}
}

// scan reads what was appended to every log file of ns's pods since the last scan.
func (t *logTail) scan(dir, ns string) {
	files, _ := filepath.Glob(filepath.Join(dir, ns+"_*", "worker", "*.log"))
	for _, f := range files {
		podDir := filepath.Base(filepath.Dir(filepath.Dir(f)))
		// <ns>_<pod>_<uid>: pod names have no '_'.
		fields := strings.Split(podDir, "_")
		if len(fields) != 3 {
			continue
		}
		key := fields[1] + "#" + strings.TrimSuffix(filepath.Base(f), ".log")
		t.read(f, fields[1], key)
	}
}

func (t *logTail) read(file, pod, key string) {
	fh, err := os.Open(file)
	if err != nil {
		return
	}
	defer fh.Close()
	t.mu.Lock()
	off := t.offset[file]
	t.mu.Unlock()
	if _, err := fh.Seek(off, io.SeekStart); err != nil {
		return
	}
	data, err := io.ReadAll(fh)
	if err != nil {
		return
	}
	end := strings.LastIndexByte(string(data), '\n')
	if end < 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.offset[file] = off + int64(end) + 1
	for _, line := range strings.Split(string(data[:end]), "\n") {
		if l, ok := parseTermLine(line); ok {
			t.procLocked(key, pod).add(l)
		}
	}
}

func (t *logTail) procLocked(key, pod string) *proc {
	p := t.procs[key]
	if p == nil {
		p = &proc{Key: key, Pod: pod}
		t.procs[key] = p
	}
	return p
}

// endAt records that process key's term ended at at, as only the harness knows: it killed the
// process then, or its own last line was lost.
func (t *logTail) endAt(key string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ended[key] = at
}

// snapshot copies every process, with Stopped set to endAt's time when that came first.
func (t *logTail) snapshot() []proc {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]proc, 0, len(t.procs))
	for key, p := range t.procs {
		c := *p
		if at, ok := t.ended[key]; ok && (c.Stopped.IsZero() || at.Before(c.Stopped)) {
			c.Stopped = at
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// active is the processes leading now: a term started and not ended.
func active(procs []proc) []proc {
	var out []proc
	for _, p := range procs {
		if !p.start().IsZero() && p.Stopped.IsZero() {
			out = append(out, p)
		}
	}
	return out
}

// currentKey is the key of pod's newest process (highest restart count), "" when none logged.
func currentKey(procs []proc, pod string) string {
	best, bestN := "", -1
	for _, p := range procs {
		if p.Pod != pod {
			continue
		}
		if n := restartNumber(p.Key); n > bestN {
			best, bestN = p.Key, n
		}
	}
	return best
}

func restartNumber(key string) int {
	_, n, _ := strings.Cut(key, "#")
	v := 0
	for _, c := range n {
		if c < '0' || c > '9' {
			return -1
		}
		v = v*10 + int(c-'0')
	}
	return v
}

// overlapWithin is how long, within [from, to], at least two processes were leading: each term
// runs from its start to its end (to when not ended).
func overlapWithin(procs []proc, from, to time.Time) time.Duration {
	type edge struct {
		at time.Time
		d  int
	}
	var edges []edge
	for _, p := range procs {
		s, e := p.start(), p.Stopped
		if s.IsZero() {
			continue
		}
		if e.IsZero() || e.After(to) {
			e = to
		}
		if s.Before(from) {
			s = from
		}
		if !e.After(s) {
			continue
		}
		edges = append(edges, edge{s, 1}, edge{e, -1})
	}
	// Ends before starts at the same instant: touching terms do not overlap.
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].at.Equal(edges[j].at) {
			return edges[i].d < edges[j].d
		}
		return edges[i].at.Before(edges[j].at)
	})
	var total time.Duration
	n := 0
	var last time.Time
	for _, e := range edges {
		if n >= 2 {
			total += e.at.Sub(last)
		}
		n += e.d
		last = e.at
	}
	return total
}
