// Command compare is the side-by-side benchmark of `make bench`: LeaderLock (controller +
// candidate pods, the harness playing the kubelet), the TryLock polling loop, etcd's
// concurrency.Mutex (watch-based waiting) and client-go leader election on Leases, on the same
// loopback control plane in the same run. Each etcd-based system gets its own etcd started here,
// so revision counts never mix; client-go writes through the apiserver into its etcd
// (APISERVER_ETCD_ENDPOINTS).
//
// Phases, in priority order, one file each: idle write amplification (idle.go), failover
// latency (failover.go), planned handover latency (handover.go), scale, 1k and 10k (scale.go),
// controller restart (restart.go), one lock shared by two clusters (multicluster.go, run first:
// see there), the apiserver's price of an election and a mass failover (price.go, run last, with
// controllers of its own); each
// records its figures in its own result type, report.go turns them into the report. It prints a table, writes BENCHMARKS.md (-out) and ends stdout with one
// machine-readable "BENCH ..." line. Run it through hack/bench.sh.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	idleLocks, idleSecs, handovers, slowHandovers     int
	lanes                                             int
	scales, priceSizes                                []int
	profileSecs                                       int
	trylockInterval                                   string
	controllerBin, electorBin, etcdBinDir, kubeconfig string
	apiserverEtcd, clusterDir, crd, out               string
}

var (
	cfg   config
	k     *kube
	res   = results{scales: map[int]*scaleResult{}} // figures for the report and the BENCH line
	notes []string
)

func main() {
	flag.StringVar(&cfg.out, "out", "BENCHMARKS.md", "where to write the report")
	flag.StringVar(&cfg.crd, "crd", "crds/", "CRD manifests (a file or a directory)")
	flag.StringVar(&cfg.controllerBin, "controller", "target/release/leaderlock", "leaderlock binary")
	flag.StringVar(&cfg.electorBin, "elector", "", "client-go elector peer binary")
	flag.Parse()
	cfg.idleLocks = envInt("BENCH_IDLE_LOCKS", 100)
	cfg.idleSecs = envInt("BENCH_IDLE_SECONDS", 60)
	cfg.handovers = envInt("BENCH_HANDOVERS", 50)
	cfg.slowHandovers = envInt("BENCH_SLOW_HANDOVERS", 50)
	cfg.lanes = max(1, envInt("BENCH_LANES", 10))
	cfg.scales = sizes("BENCH_SCALE", "1000,10000")
	cfg.priceSizes = sizes("BENCH_PRICE_SIZES", "100,1000")
	cfg.trylockInterval = envStr("BENCH_TRYLOCK_INTERVAL", "1s")
	cfg.profileSecs = envInt("BENCH_APISERVER_PROFILE_SECONDS", 30)
	cfg.etcdBinDir = mustEnv("LEADERLOCK_ETCD_BIN_DIR")
	cfg.kubeconfig = mustEnv("KUBECONFIG")
	cfg.apiserverEtcd = mustEnv("APISERVER_ETCD_ENDPOINTS")
	cfg.clusterDir = mustEnv("LEADERLOCK_CLUSTER_DIR")
	phases := envStr("BENCH_PHASES", "idle,failover,handover,scale,spread,restart,multicluster,price")

	var err error
	logDir, err = os.MkdirTemp("", "leaderlock-bench-")
	must(err)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		killAll()
		os.Exit(130)
	}()
	defer killAll()
	logf("logs and etcd data in %s", logDir)

	k = newKube(cfg.kubeconfig)
	kubectl("apply", "--server-side", "--force-conflicts", "-f", cfg.crd)
	kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/leaderlocks.leaderlock.dev")

	etcds := map[string]*etcd{}
	for _, s := range []string{"leaderlock", "trylock", "mutex"} {
		etcds[s] = startEtcd(cfg.etcdBinDir, "etcd-"+s)
	}
	if strings.Contains(phases, "multicluster") {
		// First: the shared controller below would serve this phase's LeaderLock too.
		multicluster()
		report(false)
	}
	ctl := startController(cfg.controllerBin, etcds["leaderlock"].endpoint, 1)
	must(ctl.waitFor("active", 60*time.Second, func(c *controller) bool { return !c.activeAt.IsZero() }))
	apiPid := readPid(filepath.Join(cfg.clusterDir, "kube-apiserver.pid"))
	startedAt := time.Now()

	if strings.Contains(phases, "idle") {
		idle(etcds, ctl, apiPid)
		report(false)
	}
	if strings.Contains(phases, "failover") {
		failover(etcds)
		report(false)
	}
	if strings.Contains(phases, "handover") {
		handoverPhase()
		report(false)
	}
	if strings.Contains(phases, "scale") {
		for _, n := range cfg.scales {
			scale(etcds, ctl, apiPid, n)
			report(false)
		}
	}
	if strings.Contains(phases, "spread") {
		spread(etcds)
		report(false)
	}
	if strings.Contains(phases, "restart") {
		ctl = restart(etcds, ctl)
	}
	if strings.Contains(phases, "price") {
		// Its controllers watch one namespace each; the shared one would write there too.
		ctl.p.stop(syscall.SIGTERM, 15*time.Second)
		for _, m := range cfg.priceSizes {
			price(apiPid, m)
			report(false)
		}
	}
	res.totalS = fmt.Sprintf("%.0f", time.Since(startedAt).Seconds())
	report(true)
	if broken := brokenPromises(&res); len(broken) > 0 {
		fatalf("LeaderLock broke what it promises (the report above has the figures): %s", strings.Join(broken, "; "))
	}
	killAll()
	// Etcd data and logs run to hundreds of MB; a failed run keeps them (fatalf) to be read.
	if os.Getenv("BENCH_KEEP_LOGS") == "" {
		_ = os.RemoveAll(logDir)
	} else {
		logf("logs and etcd data kept in %s", logDir)
	}
}

// results holds every phase's figures; a nil phase was not run (BENCH_PHASES) and reports n/a.
type results struct {
	idle     *idleResult
	failover *failoverResult
	handover *handoverResult
	scales   map[int]*scaleResult // by number of LeaderLocks
	restart  *restartResult
	multi    *multiResult
	spread   []*spreadResult // spread.go, one per size
	price    []*priceResult  // price.go, one per BENCH_PRICE_SIZES entry
	totalS   string          // seconds of measurement
}

func kubectl(args ...string) string {
	out, err := exec.Command("kubectl", args...).CombinedOutput()
	if err != nil {
		fatalf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sizes reads a comma-separated list of positive numbers of LeaderLocks from env var name.
func sizes(name, def string) []int {
	var out []int
	for _, f := range strings.Split(envStr(name, def), ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fatalf("%s: %q is not a positive number of LeaderLocks", name, f)
		}
		out = append(out, n)
	}
	return out
}

func readPid(path string) int {
	b, err := os.ReadFile(path)
	must(err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	must(err)
	return pid
}

func perMin(delta float64, d time.Duration) float64 { return delta * 60 / d.Seconds() }
