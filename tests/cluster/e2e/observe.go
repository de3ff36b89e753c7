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
	Ready         bool
	Deleting      bool
	Role          string // the lock annotation: leader, standby or ""
	ContainerID   string
	StartedAt     time.Time // when the worker container last started (zero: not running)
}

func listPods(ns, app string) []pod {
	var list struct {
		Items []struct {
			Metadata struct {
				Name, UID         string
				DeletionTimestamp *string           `json:"deletionTimestamp"`
				Annotations       map[string]string `json:"annotations"`
			} `json:"metadata"`
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
		p := pod{Name: it.Metadata.Name, UID: it.Metadata.UID, IP: it.Status.PodIP, Deleting: it.Metadata.DeletionTimestamp != nil}
		p.Role = it.Metadata.Annotations["leaderlock.dev/"+lockName]
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

// roleWatch follows two things for the whole run, each with its own receive time:
//   - every pod's downward-API file on the node (polled every 5 ms), and
//   - the pods' lock annotations through a watch, counting moments with two `leader` pods.
type roleWatch struct {
	mu         sync.Mutex
	fileLeader map[string]time.Duration // pod -> when its file last turned to leader
	annLeader  map[string]time.Duration // pod -> when its annotation last turned to leader
	twoLeaders int
	stop       chan struct{}
}

func newRoleWatch(ns, nodeDir string) *roleWatch {
	w := &roleWatch{fileLeader: map[string]time.Duration{}, annLeader: map[string]time.Duration{}, stop: make(chan struct{})}
	go w.pollFiles(ns, nodeDir)
	go w.watchAnnotations(ns)
	return w
}

func (w *roleWatch) pollFiles(ns, nodeDir string) {
	uids := map[string]string{}
	leader := map[string]bool{}
	refresh := time.NewTicker(time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	for {
		select {
		case <-w.stop:
			return
		case <-refresh.C:
			for _, p := range listPods(ns, "ledger-worker") {
				uids[p.Name] = p.UID
			}
		case <-tick.C:
			for name, uid := range uids {
				f := filepath.Join(nodeDir, "kubelet/pods", uid, "volumes/kubernetes.io~downward-api/leaderlock/annotations")
				data, err := os.ReadFile(f)
				if err != nil {
					continue
				}
				isLeader := bytes.Contains(data, []byte("leaderlock.dev/"+lockName+"=\"leader\""))
				if isLeader && !leader[name] {
					w.mu.Lock()
					w.fileLeader[name] = now()
					w.mu.Unlock()
				}
				leader[name] = isLeader
			}
		}
	}
}

// watchAnnotations counts the moments at which two pods are annotated leader: what the
// independent checker counts as a safety violation.
func (w *roleWatch) watchAnnotations(ns string) {
	cmd := exec.Command("kubectl", "get", "pods", "-n", ns, "-l", "app=ledger-worker", "-w", "--output-watch-events", "-o", "json")
	out, err := cmd.StdoutPipe()
	if err != nil {
		fail("pod watch: %v", err)
	}
	if err := cmd.Start(); err != nil {
		fail("pod watch: %v", err)
	}
	go func() { <-w.stop; _ = cmd.Process.Kill() }()
	dec := json.NewDecoder(bufio.NewReader(out))
	roles := map[string]string{}
	for {
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
			return
		}
		p := ev.Object
		if ev.Type == "DELETED" {
			delete(roles, p.Metadata.Name)
			continue
		}
		role := p.Metadata.Annotations["leaderlock.dev/"+lockName]
		if role == "leader" && roles[p.Metadata.Name] != "leader" {
			w.mu.Lock()
			w.annLeader[p.Metadata.Name] = now()
			w.mu.Unlock()
		}
		roles[p.Metadata.Name] = role
		n := 0
		for _, r := range roles {
			if r == "leader" {
				n++
			}
		}
		if n > 1 {
			w.mu.Lock()
			w.twoLeaders++
			w.mu.Unlock()
		}
	}
}

func (w *roleWatch) fileTurnedLeader(pod string, after time.Duration) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.fileLeader[pod]
	return t, ok && t >= after
}

func (w *roleWatch) annotationTurnedLeader(pod string, after time.Duration) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.annLeader[pod]
	return t, ok && t >= after
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
	cmd := exec.Command("kubectl", "get", "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name="+service, "-w", "-o", "json")
	out, err := cmd.StdoutPipe()
	if err != nil {
		fail("slice watch: %v", err)
	}
	if err := cmd.Start(); err != nil {
		fail("slice watch: %v", err)
	}
	go func() { <-stop; _ = cmd.Process.Kill() }()
	go func() {
		dec := json.NewDecoder(bufio.NewReader(out))
		for {
			var sl struct {
				Endpoints []struct {
					Addresses  []string `json:"addresses"`
					Conditions struct {
						Ready *bool `json:"ready"`
					} `json:"conditions"`
				} `json:"endpoints"`
			}
			if err := dec.Decode(&sl); err != nil {
				return
			}
			var addrs []string
			for _, e := range sl.Endpoints {
				if e.Conditions.Ready == nil || *e.Conditions.Ready {
					addrs = append(addrs, e.Addresses...)
				}
			}
			sort.Strings(addrs)
			s.mu.Lock()
			s.changes = append(s.changes, sliceChange{At: now(), Addrs: strings.Join(addrs, ",")})
			s.mu.Unlock()
		}
	}()
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
