package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// now is the kernel's boot-time clock, the clock the jobs stamp their lines with.
func now() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		panic(err)
	}
	return time.Duration(ts.Nano())
}

// jobEvent is one line a job wrote: a start (with its fencing token) or a stop.
type jobEvent struct {
	Pod   string
	Start bool
	At    time.Duration
	Token uint64
}

// readJobLog parses every line in the node's joblog directory, ordered by time.
func readJobLog(dir string) []jobEvent {
	var out []jobEvent
	files, _ := os.ReadDir(dir)
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(dir, f.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			w := strings.Fields(line)
			if len(w) < 2 {
				continue
			}
			secs, err := strconv.ParseFloat(w[1], 64)
			if err != nil {
				continue
			}
			ev := jobEvent{Pod: f.Name(), Start: w[0] == "start", At: time.Duration(secs * float64(time.Second))}
			if ev.Start && len(w) > 2 {
				ev.Token, _ = strconv.ParseUint(w[2], 10, 64)
			}
			out = append(out, ev)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].At < out[j].At })
	return out
}

// running returns the pods whose last job line is a start, with its token.
func running(events []jobEvent) map[string]uint64 {
	r := map[string]uint64{}
	for _, e := range events {
		if e.Start {
			r[e.Pod] = e.Token
		} else {
			delete(r, e.Pod)
		}
	}
	return r
}

// kubectl runs kubectl and returns stdout; the error carries stderr.
func kubectl(args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("kubectl", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

func mustKubectl(args ...string) string {
	out, err := kubectl(args...)
	if err != nil {
		fail("%v", err)
	}
	return out
}

// pod is what the harness reads of a pod.
type pod struct {
	Name, UID, IP string
	Node          string // spec.nodeName
	Ready         bool
	Deleting      bool
	Role          string // the lock annotation: leader, standby or ""
	Token         string // the lock's token annotation (holder only)
	Resync        string // the controller's leaderlock.dev/roles.resync annotation ("": absent)
	ContainerID   string
	StartedAt     time.Time // when the worker container last started (zero: not running)
}

// The annotation keys the harness reads (docs/contract.md §3.1).
const (
	ourPrefix = "leaderlock.dev/"
	roleKey   = ourPrefix + lockName
	tokenKey  = roleKey + ".token"
	resyncKey = ourPrefix + "roles.resync"
)

func listPods(ns, app string) []pod {
	var list struct {
		Items []struct {
			Metadata struct {
				Name, UID         string
				DeletionTimestamp *string           `json:"deletionTimestamp"`
				Annotations       map[string]string `json:"annotations"`
			} `json:"metadata"`
			Spec struct {
				NodeName string `json:"nodeName"`
			} `json:"spec"`
			Status struct {
				PodIP      string `json:"podIP"`
				Conditions []struct{ Type, Status string }
				Containers []struct {
					Name        string `json:"name"`
					ContainerID string `json:"containerID"`
					State       struct {
						Running *struct {
							StartedAt time.Time `json:"startedAt"`
						} `json:"running"`
					} `json:"state"`
				} `json:"containerStatuses"`
			} `json:"status"`
		} `json:"items"`
	}
	out, err := kubectl("get", "pods", "-n", ns, "-l", "app="+app, "-o", "json")
	if err != nil || json.Unmarshal([]byte(out), &list) != nil {
		return nil
	}
	var pods []pod
	for _, it := range list.Items {
		p := pod{Name: it.Metadata.Name, UID: it.Metadata.UID, IP: it.Status.PodIP, Node: it.Spec.NodeName, Deleting: it.Metadata.DeletionTimestamp != nil}
		ann := it.Metadata.Annotations
		p.Role, p.Token, p.Resync = ann[roleKey], ann[tokenKey], ann[resyncKey]
		for _, c := range it.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				p.Ready = true
			}
		}
		for _, c := range it.Status.Containers {
			if c.Name == "worker" {
				p.ContainerID = strings.TrimPrefix(c.ContainerID, "containerd://")
				if c.State.Running != nil {
					p.StartedAt = c.State.Running.StartedAt
				}
			}
		}
		pods = append(pods, p)
	}
	return pods
}

// follow runs a `kubectl ... -w -o json` watch and hands its stream to next until next fails;
// when the watch ends without stop — the apiserver closes every watch after 30–60 min
// (--min-request-timeout), well within a full run — it starts it again, paced by a second.
func follow(what string, args []string, stop <-chan struct{}, next func(*json.Decoder) error) {
	for {
		cmd := exec.Command("kubectl", args...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			fail("%s: %v", what, err)
		}
		if err := cmd.Start(); err != nil {
			fail("%s: %v", what, err)
		}
		ended := make(chan struct{})
		go func() {
			select {
			case <-stop:
				_ = cmd.Process.Kill()
			case <-ended:
			}
		}()
		dec := json.NewDecoder(bufio.NewReader(out))
		for next(dec) == nil {
		}
		close(ended)
		_ = cmd.Wait()
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
			logf("%s ended; watching again", what)
		}
	}
}

// roleWatch follows two things for the whole run, each with its own receive time:
//   - every pod's downward-API file on the node (polled every 5 ms), and
//   - the pods' `leaderlock.dev/*` annotations through a watch: role changes, the controller's
//     resync writes, and moments with two `leader` pods.
type roleWatch struct {
	mu         sync.Mutex
	fileLeader map[string]time.Duration // pod -> when its file last turned to leader
	fileLeft   map[string]time.Duration // pod -> when its file last stopped saying leader
	annLeader  map[string]time.Duration // pod -> when its annotation last turned to leader
	annLeft    map[string]time.Duration // pod -> when its annotation last stopped being leader
	leadChange map[string]time.Duration // pod -> when what it leads (role and token) last changed
	ours       map[string]map[string]string
	// resyncs: every update that changed the pod's resync key; Only marks those that changed
	// nothing else of ours, the extra writes the resync costs.
	resyncs    []resyncWrite
	gone       map[string]bool
	turns      []leaderTurn // every pod's annotation turning leader, in order
	twoLeaders int
	stop       chan struct{}
}

// leaderTurn is one pod's annotation turning leader.
type leaderTurn struct {
	Pod string
	At  time.Duration
}

type resyncWrite struct {
	Pod  string
	At   time.Duration
	Only bool
}

func newRoleWatch(ns string, nodes []*node) *roleWatch {
	w := &roleWatch{
		fileLeader: map[string]time.Duration{}, fileLeft: map[string]time.Duration{},
		annLeader: map[string]time.Duration{}, annLeft: map[string]time.Duration{},
		leadChange: map[string]time.Duration{}, ours: map[string]map[string]string{},
		gone: map[string]bool{}, stop: make(chan struct{}),
	}
	go w.pollFiles(ns, nodes)
	go w.watchAnnotations(ns)
	return w
}

// pollFiles reads each pod's downward-API file where its node's kubelet projects it.
func (w *roleWatch) pollFiles(ns string, nodes []*node) {
	uids := map[string]string{}
	dirs := map[string]string{} // pod -> its node's dir
	leader := map[string]bool{}
	refresh := time.NewTicker(time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	for {
		select {
		case <-w.stop:
			return
		case <-refresh.C:
			for _, p := range listPods(ns, "ledger-worker") {
				if n := nodeNamed(nodes, p.Node); n != nil {
					uids[p.Name], dirs[p.Name] = p.UID, n.Dir
				}
			}
		case <-tick.C:
			for name, uid := range uids {
				f := filepath.Join(dirs[name], "kubelet/pods", uid, "volumes/kubernetes.io~downward-api/leaderlock/annotations")
				data, err := os.ReadFile(f)
				if err != nil {
					continue
				}
				isLeader := bytes.Contains(data, []byte(roleKey+"=\"leader\""))
				if isLeader != leader[name] {
					w.mu.Lock()
					if isLeader {
						w.fileLeader[name] = now()
					} else {
						w.fileLeft[name] = now()
					}
					w.mu.Unlock()
				}
				leader[name] = isLeader
			}
		}
	}
}

func (w *roleWatch) watchAnnotations(ns string) {
	args := []string{"get", "pods", "-n", ns, "-l", "app=ledger-worker", "-w", "--output-watch-events", "-o", "json"}
	follow("pod watch", args, w.stop, func(dec *json.Decoder) error {
		var ev struct {
			Type   string `json:"type"`
			Object struct {
				Metadata struct {
					Name        string            `json:"name"`
					Annotations map[string]string `json:"annotations"`
				} `json:"metadata"`
			} `json:"object"`
		}
		if err := dec.Decode(&ev); err != nil {
			return err
		}
		w.observe(ev.Type, ev.Object.Metadata.Name, ev.Object.Metadata.Annotations, now())
		return nil
	})
}

// ours is the `leaderlock.dev/*` part of a pod's annotations.
func ours(ann map[string]string) map[string]string {
	m := map[string]string{}
	for k, v := range ann {
		if strings.HasPrefix(k, ourPrefix) {
			m[k] = v
		}
	}
	return m
}

// leads is what a pod leads, as the controller's resync digest covers it: the lock's token
// while it is leader ("" when it leads nothing).
func leads(m map[string]string) string {
	if m[roleKey] != "leader" {
		return ""
	}
	return "leader " + m[tokenKey]
}

// keyChanged: key k is present in one of a and b only, or differs.
func keyChanged(a, b map[string]string, k string) bool {
	va, inA := a[k]
	vb, inB := b[k]
	return inA != inB || va != vb
}

// onlyResync: the update from prev to cur changed the resync key and no other key of ours.
func onlyResync(prev, cur map[string]string) bool {
	if !keyChanged(prev, cur, resyncKey) {
		return false
	}
	for _, m := range []map[string]string{prev, cur} {
		for k := range m {
			if k != resyncKey && keyChanged(prev, cur, k) {
				return false
			}
		}
	}
	return true
}

// observe takes one watch event of pod name: it records role and leadership changes and resync
// writes, and counts the moments at which two pods are annotated leader — what the independent
// checker counts as a safety violation. A relisted pod (ADDED after the watch restarted) is
// compared with what was known of it, but never counted as a resync write.
func (w *roleWatch) observe(typ, name string, ann map[string]string, at time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if typ == "DELETED" {
		delete(w.ours, name)
		w.gone[name] = true
		return
	}
	cur := ours(ann)
	prev, known := w.ours[name]
	w.ours[name] = cur
	if known && keyChanged(prev, cur, resyncKey) {
		w.resyncs = append(w.resyncs, resyncWrite{Pod: name, At: at, Only: typ == "MODIFIED" && onlyResync(prev, cur)})
	}
	wasLeader, isLeader := prev[roleKey] == "leader", cur[roleKey] == "leader"
	if isLeader && !wasLeader {
		w.annLeader[name] = at
		w.turns = append(w.turns, leaderTurn{Pod: name, At: at})
	}
	if wasLeader && !isLeader {
		w.annLeft[name] = at
	}
	if leads(prev) != leads(cur) {
		w.leadChange[name] = at
	}
	n := 0
	for _, m := range w.ours {
		if m[roleKey] == "leader" {
			n++
		}
	}
	if n > 1 {
		w.twoLeaders++
	}
}

// since is m[pod] when that is at or after `after`.
func (w *roleWatch) since(m map[string]time.Duration, pod string, after time.Duration) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := m[pod]
	return t, ok && t >= after
}

func (w *roleWatch) fileTurnedLeader(pod string, after time.Duration) (time.Duration, bool) {
	return w.since(w.fileLeader, pod, after)
}

func (w *roleWatch) fileLeftLeader(pod string, after time.Duration) (time.Duration, bool) {
	return w.since(w.fileLeft, pod, after)
}

func (w *roleWatch) annotationTurnedLeader(pod string, after time.Duration) (time.Duration, bool) {
	return w.since(w.annLeader, pod, after)
}

func (w *roleWatch) annotationLeftLeader(pod string, after time.Duration) (time.Duration, bool) {
	return w.since(w.annLeft, pod, after)
}

// turnsSince is every annotation turning leader at or after `after`, in order.
func (w *roleWatch) turnsSince(after time.Duration) []leaderTurn {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []leaderTurn
	for _, t := range w.turns {
		if t.At >= after {
			out = append(out, t)
		}
	}
	return out
}

// resynced: what pod leads changed at or after `after`, and its resync key changed since (the
// controller's follow-up, alone or with another change), or the pod is gone.
func (w *roleWatch) resynced(pod string, after time.Duration) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gone[pod] {
		return true
	}
	changed, ok := w.leadChange[pod]
	if !ok || changed < after {
		return false
	}
	for _, r := range w.resyncs {
		if r.Pod == pod && r.At >= changed {
			return true
		}
	}
	return false
}

// resyncWrites counts the updates in [from, to) whose only change of ours was the resync key.
func (w *roleWatch) resyncWrites(from, to time.Duration) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, r := range w.resyncs {
		if r.Only && r.At >= from && r.At < to {
			n++
		}
	}
	return n
}

// sliceWatch records each change of the leader Service's ready addresses with its time.
type sliceWatch struct {
	mu      sync.Mutex
	changes []sliceChange
}

type sliceChange struct {
	At    time.Duration
	Addrs string // sorted, comma-separated
}

func newSliceWatch(ns, service string, stop chan struct{}) *sliceWatch {
	s := &sliceWatch{}
	args := []string{"get", "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=" + service, "-w", "-o", "json"}
	go follow("EndpointSlice watch", args, stop, func(dec *json.Decoder) error {
		var sl struct {
			Endpoints []struct {
				Addresses  []string `json:"addresses"`
				Conditions struct {
					Ready *bool `json:"ready"`
				} `json:"conditions"`
			} `json:"endpoints"`
		}
		if err := dec.Decode(&sl); err != nil {
			return err
		}
		var addrs []string
		for _, e := range sl.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				addrs = append(addrs, e.Addresses...)
			}
		}
		sort.Strings(addrs)
		joined := strings.Join(addrs, ",")
		s.mu.Lock()
		// Only changes: a slice update that keeps the ready addresses, or the relist of a
		// restarted watch, is none.
		if len(s.changes) == 0 || s.changes[len(s.changes)-1].Addrs != joined {
			s.changes = append(s.changes, sliceChange{At: now(), Addrs: joined})
		}
		s.mu.Unlock()
		return nil
	})
	return s
}

// switchedTo is when the Service first held exactly ip, after `after`.
func (s *sliceWatch) switchedTo(ip string, after time.Duration) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.changes {
		if c.At >= after && c.Addrs == ip {
			return c.At, true
		}
	}
	return 0, false
}

func (s *sliceWatch) current() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.changes) == 0 {
		return ""
	}
	return s.changes[len(s.changes)-1].Addrs
}
