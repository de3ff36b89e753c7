package main

// Processes, etcd members, /proc accounting and small helpers of the harness.

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// line is one stdout line of a child process, stamped when the harness read it.
type line struct {
	p    *proc
	text string
	at   time.Time
}

// proc is a child process; it dies with the harness (parent-death signal) and at cleanup.
type proc struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
}

var (
	procsMu sync.Mutex
	procs   []*proc
	logDir  string
)

// start runs bin with args; every stdout line goes to lines (if not nil); stderr goes to
// logDir/<name>.log.
func start(name string, lines chan<- line, bin string, args ...string) *proc {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	errf, err := os.Create(filepath.Join(logDir, name+".log"))
	must(err)
	cmd.Stderr = errf
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	// A pipe that stays open: the mutex peer releases its lock when stdin closes.
	p.stdin, err = cmd.StdinPipe()
	must(err)
	out, err := cmd.StdoutPipe()
	must(err)
	must(cmd.Start())
	errf.Close()
	procsMu.Lock()
	procs = append(procs, p)
	procsMu.Unlock()
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if lines != nil {
				lines <- line{p: p, text: sc.Text(), at: time.Now()}
			}
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) signal(s syscall.Signal) { _ = p.cmd.Process.Signal(s) }

// stop sends sig and waits (bounded) for the exit, then SIGKILLs.
func (p *proc) stop(sig syscall.Signal, wait time.Duration) {
	p.signal(sig)
	select {
	case <-p.done:
	case <-time.After(wait):
		p.signal(syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
	}
}

func killAll() {
	procsMu.Lock()
	defer procsMu.Unlock()
	for _, p := range procs {
		p.signal(syscall.SIGKILL)
	}
}

// waitLines reads lines until n of them satisfy match, or timeout.
func waitLines(ch <-chan line, n int, timeout time.Duration, match func(line) bool) ([]line, error) {
	var got []line
	deadline := time.After(timeout)
	for len(got) < n {
		select {
		case l := <-ch:
			if match(l) {
				got = append(got, l)
			}
		case <-deadline:
			return got, fmt.Errorf("timed out after %s: %d of %d lines", timeout, len(got), n)
		}
	}
	return got, nil
}

// drain discards whatever is buffered in ch.
func drain(ch <-chan line) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// etcd is one etcd member of the harness, for one system under test.
type etcd struct {
	name     string
	endpoint string
	proc     *proc
}

func startEtcd(binDir, name string) *etcd {
	client, peer := freePort(), freePort()
	cu, pu := fmt.Sprintf("http://127.0.0.1:%d", client), fmt.Sprintf("http://127.0.0.1:%d", peer)
	data := filepath.Join(logDir, name+".data")
	p := start(name, nil, filepath.Join(binDir, "etcd"), "--name", name, "--data-dir", data,
		"--listen-client-urls", cu, "--advertise-client-urls", cu,
		"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
		"--initial-cluster", name+"="+pu, "--log-level", "error", "--unsafe-no-fsync")
	e := &etcd{name: name, endpoint: cu, proc: p}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := revision(cu); err == nil {
			return e
		}
		if time.Now().After(deadline) {
			fatalf("etcd %s did not answer within 30s", name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var httpc = &http.Client{Timeout: 10 * time.Second}

func etcdPost(endpoint, path string, body any, out any) error {
	b, _ := json.Marshal(body)
	resp, err := httpc.Post(endpoint+path, "application/json", bytes.NewReader(b))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s: %s", path, resp.Status, msg)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// revision is etcd's current revision, read through the JSON gateway (a read: no write).
func revision(endpoint string) (int64, error) {
	var r struct {
		Header struct {
			Revision string `json:"revision"`
		} `json:"header"`
	}
	if err := etcdPost(endpoint, "/v3/kv/range", map[string]any{"key": b64("\x00")}, &r); err != nil {
		return 0, err
	}
	return strconv.ParseInt(r.Header.Revision, 10, 64)
}

func mustRevision(endpoint string) int64 {
	r, err := revision(endpoint)
	must(err)
	return r
}

// keyRevisions maps every key under prefix to its mod revision.
func keyRevisions(endpoint, prefix string) map[string]int64 {
	end := []byte(prefix)
	end[len(end)-1]++
	var r struct {
		Kvs []struct {
			Key         string `json:"key"`
			ModRevision string `json:"mod_revision"`
		} `json:"kvs"`
	}
	must(etcdPost(endpoint, "/v3/kv/range", map[string]any{"key": b64(prefix), "range_end": b64(string(end)), "keys_only": true}, &r))
	out := map[string]int64{}
	for _, kv := range r.Kvs {
		k, _ := base64.StdEncoding.DecodeString(kv.Key)
		m, _ := strconv.ParseInt(kv.ModRevision, 10, 64)
		out[string(k)] = m
	}
	return out
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// cpuSeconds is utime+stime of pid from /proc/<pid>/stat.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}

// statusKB reads a "VmHWM:"-style field of /proc/<pid>/status, in kB.
func statusKB(pid int, field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			v, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return v
		}
	}
	return 0
}

// percentiles of durations in ms: p50, p95, p99, max (nearest rank).
type stats struct {
	N                  int
	P50, P95, P99, Max float64
}

func summarize(d []time.Duration) stats {
	if len(d) == 0 {
		return stats{}
	}
	ms := make([]float64, len(d))
	for i, x := range d {
		ms[i] = float64(x.Microseconds()) / 1000
	}
	sort.Float64s(ms)
	rank := func(p float64) float64 {
		i := int(p*float64(len(ms))+0.999999) - 1
		if i < 0 {
			i = 0
		}
		if i >= len(ms) {
			i = len(ms) - 1
		}
		return ms[i]
	}
	return stats{N: len(ms), P50: rank(0.50), P95: rank(0.95), P99: rank(0.99), Max: ms[len(ms)-1]}
}

func must(err error) {
	if err != nil {
		fatalf("%v", err)
	}
}

func fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
	if logDir != "" {
		fmt.Fprintf(os.Stderr, "bench: logs and etcd data kept in %s\n", logDir)
	}
	killAll()
	os.Exit(1)
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, a...))
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envStr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func mustEnv(name string) string {
	v := os.Getenv(name)
	if v == "" {
		fatalf("%s is not set: run through hack/bench.sh (make bench)", name)
	}
	return v
}

// parallel runs f(0..n-1) on `workers` goroutines and returns the first error.
func parallel(n, workers int, f func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  int
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				stop := first != nil
				mu.Unlock()
				if i >= n || stop {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return first
}

func cmdOut(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return "unavailable"
	}
	return strings.TrimSpace(string(out))
}
