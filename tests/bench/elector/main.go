// Command elector is the client-go leader-election peer of the benchmarks: one process is one
// candidate identity, running one LeaderElector per Lease (-locks N: leases <prefix>-0..N-1)
// with client-go's default timings (LeaseDuration 15s, RenewDeadline 10s, RetryPeriod 2s).
//
// Output lines: "ready" once every elector runs, "acquired <lease> <unix-nanos>" when this
// identity becomes leader of a lease, "released" after SIGTERM/SIGINT cancelled the context
// (with -release-on-cancel the held leases are released first, as ReleaseOnCancel does).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig")
	namespace := flag.String("namespace", "default", "namespace of the Leases")
	prefix := flag.String("prefix", "bench", "Lease name prefix")
	locks := flag.Int("locks", 1, "number of Leases (one LeaderElector each)")
	id := flag.String("id", "", "candidate identity (required)")
	release := flag.Bool("release-on-cancel", false, "ReleaseOnCancel: give the leases up on SIGTERM")
	flag.Parse()
	if *id == "" {
		fmt.Fprintln(os.Stderr, "-id is required")
		os.Exit(2)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubeconfig:", err)
		os.Exit(1)
	}
	// Each elector stands for one process in a real deployment, with its own rate limiter:
	// lift client-go's default 5 QPS so that packing electors in one process does not throttle.
	cfg.QPS, cfg.Burst = 5000, 10000
	cfg.UserAgent = "bench-elector/" + *id
	cs := kubernetes.NewForConfigOrDie(cfg)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var out sync.Mutex
	say := func(format string, a ...any) {
		out.Lock()
		defer out.Unlock()
		fmt.Printf(format+"\n", a...)
	}
	var wg sync.WaitGroup
	for i := 0; i < *locks; i++ {
		name := fmt.Sprintf("%s-%d", *prefix, i)
		lock := &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Name: name, Namespace: *namespace},
			Client:     cs.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: *id},
		}
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   15 * time.Second,
			RenewDeadline:   10 * time.Second,
			RetryPeriod:     2 * time.Second,
			ReleaseOnCancel: *release,
			Name:            name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) { say("acquired %s %d", name, time.Now().UnixNano()) },
				OnStoppedLeading: func() {},
			},
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "elector:", err)
			os.Exit(1)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			le.Run(ctx) // returns when ctx ends (releasing first with ReleaseOnCancel) or leadership is lost
		}()
	}
	say("ready")
	wg.Wait()
	say("released")
}
