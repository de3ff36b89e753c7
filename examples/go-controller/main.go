// go-controller is a small controller-runtime manager that reconciles ConfigMaps (it logs and
// counts them), elected either through LeaderLock (--election=leaderlock, the default) or
// through controller-runtime's own Lease election (--election=lease), so that the two can run
// side by side with everything else equal.
//
// Under LeaderLock the pod needs a downward-API volume projecting its annotations at
// /etc/leaderlock/annotations and a LeaderLock whose selector matches the pods and declares the
// lock named by --lock; it needs no RBAC for Leases and writes nothing to the API server to
// stay leader.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"leaderlock.dev/go/leaderelection"
	"leaderlock.dev/go/role"
)

func main() {
	election := flag.String("election", "leaderlock", "how replicas elect their leader: leaderlock (the role file) or lease (controller-runtime's Lease)")
	lock := flag.String("lock", "go-controller", "the LeaderLock lock's name (--election=leaderlock) or the Lease's name (--election=lease)")
	roleFile := flag.String("role-file", role.DefaultFile, "the downward-API projection of the pod's annotations (--election=leaderlock)")
	namespace := flag.String("namespace", os.Getenv("POD_NAMESPACE"), "the namespace whose ConfigMaps are reconciled, and the Lease's; empty: every namespace")
	probeAddr := flag.String("health-probe-bind-address", ":8081", "where /healthz and /readyz are served")
	metricsAddr := flag.String("metrics-bind-address", "0", "where /metrics is served (controller-runtime's and client-go's metrics, API requests included); 0: not served")
	release := flag.Bool("leader-election-release-on-cancel", false, "step down when the manager stops (controller-runtime's LeaderElectionReleaseOnCancel)")
	flag.Parse()
	ctrl.SetLogger(zap.New())
	log := ctrl.Log.WithName("go-controller")
	if err := run(*election, *lock, *roleFile, *namespace, *probeAddr, *metricsAddr, *release); err != nil {
		log.Error(err, "exiting")
		os.Exit(1)
	}
}

func run(election, lock, roleFile, namespace, probeAddr, metricsAddr string, release bool) error {
	log := ctrl.Log.WithName("go-controller")
	identity := os.Getenv("POD_NAME")
	if identity == "" {
		identity, _ = os.Hostname()
	}
	options := ctrl.Options{
		LeaderElection:                true,
		LeaderElectionID:              lock,
		LeaderElectionNamespace:       namespace,
		LeaderElectionReleaseOnCancel: release,
		HealthProbeBindAddress:        probeAddr,
		Metrics:                       metricsserver.Options{BindAddress: metricsAddr},
	}
	if namespace != "" {
		options.Cache = cache.Options{DefaultNamespaces: map[string]cache.Config{namespace: {}}}
	}
	var token func() string
	switch election {
	case "leaderlock":
		roleLock := leaderelection.MustNewResourceLock(leaderelection.Config{Lock: lock, File: roleFile, Identity: identity})
		// The one line that moves a manager from Lease election to LeaderLock:
		options.LeaderElectionResourceLockInterface = roleLock
		// Timing for a lock that is a local file read (see the package documentation).
		options.LeaseDuration = ptr.To(leaderelection.LeaseDuration)
		options.RenewDeadline = ptr.To(leaderelection.RenewDeadline)
		options.RetryPeriod = ptr.To(leaderelection.RetryPeriod)
		token = roleLock.Token
	case "lease":
		// controller-runtime's defaults: LeaseDuration 15s, RenewDeadline 10s, RetryPeriod 2s.
		token = func() string { return "" }
	default:
		return fmt.Errorf("--election=%q: use leaderlock or lease", election)
	}
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), options)
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	counter := &configMapCounter{client: mgr.GetClient(), token: token}
	if err := ctrl.NewControllerManagedBy(mgr).For(&corev1.ConfigMap{}).Complete(counter); err != nil {
		return fmt.Errorf("creating the controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	// Runs with the controllers, only while this replica leads: its two lines bound the term.
	if err := mgr.Add(&termLogger{identity: identity, election: election, token: token}); err != nil {
		return err
	}
	log.Info("starting", "identity", identity, "election", election, "lock", lock)
	return mgr.Start(ctrl.SetupSignalHandler())
}

// termLogger logs "leading" when the manager starts its leader-only runnables and "stopped
// leading" when it stops them (shutdown or lost election), each with the wall-clock time.
type termLogger struct {
	identity, election string
	token              func() string
}

// NeedLeaderElection puts the logger with the controllers: started on election, stopped with them.
func (t *termLogger) NeedLeaderElection() bool { return true }

func (t *termLogger) Start(ctx context.Context) error {
	log := ctrl.Log.WithName("go-controller")
	log.Info("leading", "identity", t.identity, "election", t.election, "token", t.token(), "at", now())
	<-ctx.Done()
	log.Info("stopped leading", "identity", t.identity, "election", t.election, "at", now())
	return nil
}

func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }

// configMapCounter logs every ConfigMap it reconciles and how many reconciles it has done.
type configMapCounter struct {
	client client.Client
	token  func() string
	count  atomic.Int64
}

func (c *configMapCounter) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	n := c.count.Add(1)
	var cm corev1.ConfigMap
	if err := c.client.Get(ctx, req.NamespacedName, &cm); client.IgnoreNotFound(err) != nil {
		return reconcile.Result{}, err
	}
	ctrl.LoggerFrom(ctx).Info("reconciled", "configmap", req.NamespacedName.String(), "keys", len(cm.Data), "reconciles", n,
		"token", c.token(), "at", now())
	return reconcile.Result{}, nil
}
