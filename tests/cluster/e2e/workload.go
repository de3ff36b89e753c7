package main

import (
	"fmt"
	"strings"
)

// The job both workloads run while they lead: it appends "start <uptime> <token>" to its own
// file on the node's joblog hostPath when it starts and "stop <uptime>" when SIGTERM stops it.
// Times are the kernel's boot-time clock (/proc/uptime, 10 ms resolution: busybox's date has
// no sub-second format), which the harness reads too, so job and harness times compare.
const jobScript = `log=/joblog/$(hostname)
read up _ </proc/uptime
echo "start $up ${LEADERLOCK_FENCING_TOKEN:-0}" >>$log
trap 'read up _ </proc/uptime; echo "stop $up" >>$log; exit 0' TERM
sleep 1000000 &
wait`

// indent prefixes every line of s with n spaces (YAML block scalars).
func indent(s string, n int) string {
	pad := strings.Repeat(" ", n)
	return pad + strings.ReplaceAll(s, "\n", "\n"+pad)
}

// spread is the harness's pod spread over the nodes (not in examples/: users place their own
// pods): as even as the scheduler can make it, so that a lost node has a successor elsewhere.
func spread(app string) string {
	return indent(`topologySpreadConstraints:
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: DoNotSchedule
  labelSelector:
    matchLabels: {app: `+app+`}`, 6)
}

// leaderlockWorkload is examples/deployment.yaml with the measuring job, a readiness probe the
// harness can fail (touch /tmp/unready), a hostPath for the job's timestamps (the same host dir
// on every node: they all run on this machine) and the pods spread over the nodes.
func leaderlockWorkload(ns, image, busybox, joblog string, replicas int) string {
	return fmt.Sprintf(`apiVersion: leaderlock.dev/v1alpha1
kind: LeaderLock
metadata: {name: ledger, namespace: %[1]s}
spec:
  selector:
    matchLabels: {app: ledger-worker}
  locks:
  - name: ledger-writer
  ttlSeconds: 15
  podLabels: true
---
apiVersion: v1
kind: Service
metadata: {name: ledger-leader, namespace: %[1]s}
spec:
  selector: {app: ledger-worker, leaderlock.dev/ledger-writer: leader}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ledger-worker, namespace: %[1]s}
spec:
  replicas: %[5]d
  selector:
    matchLabels: {app: ledger-worker}
  template:
    metadata:
      labels: {app: ledger-worker}
    spec:
%[7]s
      initContainers:
      - name: leaderlock
        image: %[2]s
        command: ["/leaderlock", "copy-self", "/opt/leaderlock/leaderlock"]
        volumeMounts:
        - {name: tools, mountPath: /opt/leaderlock}
      containers:
      - name: worker
        image: %[3]s
        command:
        - /opt/leaderlock/leaderlock
        - run
        - --lock=ledger-writer
        - --grace-period=20s
        - --
        - sh
        - -c
        - |
%[6]s
        readinessProbe:
          exec: {command: ["sh", "-c", "test ! -e /tmp/unready"]}
          periodSeconds: 1
          failureThreshold: 1
        volumeMounts:
        - {name: tools, mountPath: /opt/leaderlock, readOnly: true}
        - {name: leaderlock, mountPath: /etc/leaderlock, readOnly: true}
        - {name: joblog, mountPath: /joblog}
      terminationGracePeriodSeconds: 30
      volumes:
      - name: tools
        emptyDir: {}
      - name: joblog
        hostPath: {path: %[4]s, type: DirectoryOrCreate}
      - name: leaderlock
        downwardAPI:
          items:
          - path: annotations
            fieldRef: {fieldPath: metadata.annotations}
`, ns, image, busybox, joblog, replicas, indent(jobScript, 10), spread("ledger-worker"))
}

// electorWorkload runs the same job under client-go leader election (tests/bench/elector, one
// Lease, ReleaseOnCancel, client-go's default timings): the job starts when the elector prints
// "acquired"; SIGTERM to the pod stops the job and releases the Lease. When the elector stops
// leading on its own (it could not renew within RenewDeadline) it exits, and the container
// stops its job and exits with it, as controller-runtime's manager exits on a lost lease; the
// kubelet starts it again as a candidate. The job is stopped, and its stop logged, before the
// container's shell (PID 1, signalled so: "$$" would not survive the kubelet's $(VAR)
// expansion) exits: the job is not its child, and would die unlogged with the container.
func electorWorkload(ns, image, joblog, apiHost, apiPort string, replicas int) string {
	script := `trap 'trap "" TERM; kill -TERM 0; wait; exit 0' TERM
mkfifo /tmp/events
elector -id $(hostname) -namespace ` + ns + ` -prefix ledger -release-on-cancel >/tmp/events &
{
  while read ev lease ts; do
    if [ "$ev" = acquired ]; then sh -c "$JOB" & job=$!; fi
  done </tmp/events
  if [ -n "$job" ]; then kill -TERM $job; wait $job; fi
  kill -TERM 1
} &
wait`
	return fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: elector, namespace: %[1]s}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: elector, namespace: %[1]s}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: elector, namespace: %[1]s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: elector}
subjects:
- {kind: ServiceAccount, name: elector, namespace: %[1]s}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: elector-worker, namespace: %[1]s}
spec:
  replicas: %[6]d
  selector:
    matchLabels: {app: elector-worker}
  template:
    metadata:
      labels: {app: elector-worker}
    spec:
%[9]s
      serviceAccountName: elector
      containers:
      - name: worker
        image: %[2]s
        command: ["sh", "-c", "$(SCRIPT)"]
        env:
        - {name: KUBERNETES_SERVICE_HOST, value: "%[4]s"}
        - {name: KUBERNETES_SERVICE_PORT, value: "%[5]s"}
        - name: JOB
          value: |
%[7]s
        - name: SCRIPT
          value: |
%[8]s
        volumeMounts:
        - {name: joblog, mountPath: /joblog}
      terminationGracePeriodSeconds: 30
      volumes:
      - name: joblog
        hostPath: {path: %[3]s, type: DirectoryOrCreate}
`, ns, image, joblog, apiHost, apiPort, replicas, indent(jobScript, 12), indent(script, 12), spread("elector-worker"))
}
