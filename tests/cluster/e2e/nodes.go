package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// node is one kubelet of hack/node.sh: DIR/node-K holds its slot (which names its bridge and its
// cgroup root /leaderlock-SLOT), its name (127.0.0.K), its containerd socket and the pid files
// and logs of its kubelet and containerd. Every process of a node — kubelet, containerd, the
// shims, the containers — sits under its cgroup root, so the freezer hangs all of it at once.
type node struct {
	Name, Dir, Slot, Socket string
	procs                   map[string]*nodeProc // "kubelet", "containerd"
	// defaultConfig: the kubelet's own config file while a tuned one runs (lossphase.go).
	defaultConfig string
}

// loadNodes reads the nodes hack/cluster.sh started (LEADERLOCK_NODE_DIRS), first one first.
func loadNodes(dirs []string) []*node {
	var out []*node
	for _, d := range dirs {
		n := &node{Dir: d, Socket: filepath.Join(d, "containerd.sock"), Name: readTrim(filepath.Join(d, "name")), Slot: readTrim(filepath.Join(d, "slot"))}
		if n.Name == "" || n.Slot == "" {
			fail("node dir %s has no name or slot: was it started by hack/node.sh?", d)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		fail("no node dirs: run through hack/e2e.sh (LEADERLOCK_NODE_DIRS)")
	}
	return out
}

func readTrim(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// nodeNamed is the node called name (nil: none).
func nodeNamed(nodes []*node, name string) *node {
	for _, n := range nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// nodeProc is how one node process was started — command line, environment and cgroups, read from
// /proc while it ran — so that the harness can start it again the same way after killing it.
type nodeProc struct {
	name, pidFile, logFile string
	argv, env, cgroups     []string
}

// capture records the node's kubelet and containerd while they run (before any fault).
func (n *node) capture() {
	n.procs = map[string]*nodeProc{}
	for _, name := range []string{"kubelet", "containerd"} {
		p := &nodeProc{name: name, pidFile: filepath.Join(n.Dir, name+".pid"), logFile: filepath.Join(n.Dir, name+".log")}
		pid := p.pid()
		p.argv = readNul("/proc/" + strconv.Itoa(pid) + "/cmdline")
		p.env = readNul("/proc/" + strconv.Itoa(pid) + "/environ")
		p.cgroups = cgroupDirs(pid)
		if len(p.argv) == 0 || len(p.cgroups) == 0 {
			fail("cannot read how %s of node %s (pid %d) runs", name, n.Name, pid)
		}
		n.procs[name] = p
	}
}

func readNul(path string) []string {
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// cgroupDirs are the v1 cgroup dirs under a node's root (/leaderlock-…) that pid sits in.
func cgroupDirs(pid int) []string {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3) // "6:freezer:/leaderlock-1/runtime"
		if len(parts) != 3 || parts[1] == "" || !strings.HasPrefix(parts[2], "/leaderlock-") {
			continue
		}
		dir := filepath.Join("/sys/fs/cgroup", parts[1], parts[2])
		if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err == nil {
			out = append(out, dir)
		}
	}
	return out
}

func (p *nodeProc) pid() int {
	pid, err := strconv.Atoi(readTrim(p.pidFile))
	if err != nil {
		fail("read %s: %v", p.pidFile, err)
	}
	return pid
}

func (p *nodeProc) alive() bool {
	pid, err := strconv.Atoi(readTrim(p.pidFile))
	return err == nil && processRunning(pid)
}

// processRunning: pid exists and is not a zombie.
func processRunning(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// start runs the process again: moved into its cgroups by a shell before it execs (nothing it
// starts escapes them), with its environment, appending to its log, killed if the harness dies
// (the teardown also finds it through the node's cgroups), its pid recorded for the teardown.
func (p *nodeProc) start() {
	logFile, err := os.OpenFile(p.logFile, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		fail("open %s: %v", p.logFile, err)
	}
	defer logFile.Close()
	args := append([]string{"-c", `for d in $1; do echo $$ >"$d/cgroup.procs"; done; shift; exec "$@"`, "sh", strings.Join(p.cgroups, " ")}, p.argv...)
	cmd := exec.Command("/bin/sh", args...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fail("start %s: %v", p.name, err)
	}
	if err := os.WriteFile(p.pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		fail("%v", err)
	}
	go func() { _ = cmd.Wait() }()
}

// stop sends sig and waits for the process to be gone.
func (p *nodeProc) stop(sig syscall.Signal) {
	pid := p.pid()
	_ = syscall.Kill(pid, sig)
	waitFor(p.name+" to exit", 30*time.Second, func() bool { return !processRunning(pid) })
}

func (n *node) freezerDir() string { return "/sys/fs/cgroup/freezer/leaderlock-" + n.Slot }

// setFreezer writes the node's freezer state until the kernel reports it. Freezing is asked
// again every 200 ms while the cgroup stays FREEZING: a task busy in a fork or an exec (a probe
// starting in a container, runc at work) can miss one request.
func (n *node) setFreezer(state string) {
	f := filepath.Join(n.freezerDir(), "freezer.state")
	waitFor("node "+n.Name+" "+state, 30*time.Second, func() bool {
		if err := os.WriteFile(f, []byte(state), 0o644); err != nil {
			fail("write %s to %s: %v", state, f, err)
		}
		return poll(200*time.Millisecond, func() bool { return readTrim(f) == state })
	})
}

// freeze hangs every process of the node: nothing runs, nothing talks (a hung machine).
func (n *node) freeze() { n.setFreezer("FROZEN") }

func (n *node) thaw() { n.setFreezer("THAWED") }

// pids is every process under the node's cgroup root.
func (n *node) pids() []int {
	var out []int
	_ = filepath.Walk(n.freezerDir(), func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() || info.Name() != "cgroup.procs" {
			return nil
		}
		data, _ := os.ReadFile(path)
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
		return nil
	})
	return out
}

// crash kills every process of the node — kubelet, containerd, shims, containers — as a
// machine that loses power: SIGKILL to all of them, again to any a dying parent started in the
// meantime, until none is left.
func (n *node) crash() {
	waitFor("every process of node "+n.Name+" to die", 30*time.Second, func() bool {
		pids := n.pids()
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		return len(pids) == 0
	})
}

// killKubelet kills the node's kubelet alone: its containers and containerd keep running.
func (n *node) killKubelet() { n.procs["kubelet"].stop(syscall.SIGKILL) }

// bringBack starts what is not running of the node's containerd and kubelet (containerd first:
// the kubelet needs its socket).
func (n *node) bringBack() {
	if c := n.procs["containerd"]; !c.alive() {
		c.start()
		waitFor("containerd of node "+n.Name, 60*time.Second, func() bool {
			return exec.Command("ctr", "-a", n.Socket, "version").Run() == nil
		})
	}
	if k := n.procs["kubelet"]; !k.alive() {
		k.start()
	}
}

// restartProc stops one process (SIGTERM) and starts it again the same way.
func (n *node) restartProc(name string) {
	p := n.procs[name]
	p.stop(syscall.SIGTERM)
	p.start()
}

// ready: the node's Ready condition is True.
func (n *node) ready() bool {
	out, err := kubectl("get", "node", n.Name, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}")
	return err == nil && strings.TrimSpace(out) == "True"
}

// cpu is the CPU time every process of the node used so far (its cpuacct cgroup root).
func (n *node) cpu() time.Duration {
	v, err := strconv.ParseInt(readTrim("/sys/fs/cgroup/cpuacct/leaderlock-"+n.Slot+"/cpuacct.usage"), 10, 64)
	if err != nil {
		return 0
	}
	return time.Duration(v)
}

func allReady(nodes []*node) bool {
	for _, n := range nodes {
		if !n.ready() {
			return false
		}
	}
	return true
}
