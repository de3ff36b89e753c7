// Package role reads a pod's LeaderLock role from its downward-API file and follows it.
//
// LeaderLock's controller annotates every candidate pod of a lock L with
// leaderlock.dev/L ("leader" or "standby") and, on the holder, leaderlock.dev/L.token (the
// fencing token). The pod projects those annotations into a file with a downward-API volume
// (docs/contract.md §3.4), so it learns its role without any Kubernetes or etcd client, without
// RBAC and without API traffic.
//
// This package is the Go twin of the Rust helper behind `leaderlock role`, `wait` and `run`
// (contract §3.5) and has the same semantics, checked by the shared test vectors in
// testdata/rolefile/vectors.json:
//
//   - Two file forms, told apart by the content: a file with a line containing `="` is the
//     projection of metadata.annotations (one key="value" line per annotation, values quoted
//     by Go's %q, which carries the token); anything else is the projection of the single
//     annotation ("leader", "standby", or empty while the annotation is absent; no token).
//   - A file that is not something the kubelet writes (bad quoting, an unknown role, a token
//     that is not a positive integer, bytes that are not UTF-8) is an error, not a role.
//   - The file must be a regular file or a symlink to one, as the kubelet makes it; a FIFO, a
//     directory or a device is refused before it is opened, since reading one could block or
//     never end.
//   - Changes are seen through inotify on the file's directory, where the kubelet swaps its
//     `..data` symlink, with a re-read every 60 s as a safety net.
//   - [Run] holds back a "leader" found at its first read, inherited from before the process
//     started, until a change of the file (a new update: see [Snapshot]) confirms or revokes
//     it, or Config.InheritedRoleWait (default 5s) passes, as `leaderlock run` does.
//   - When the projection of metadata.annotations carries the controller's renewal
//     ([RenewedKey], "<D> <mark>"), [Run] acts on a leader role only until D after it read a new
//     mark, as `leaderlock run` does: a leader the controller cannot reach stops on its own.
//     [Read] and [WaitLeader] report it in [Status].Renewal and time nothing.
//
// Three levels of use: [Read] (one look, like `leaderlock role`), [WaitLeader] (like
// `leaderlock wait`) and [Run] (callbacks in client-go's shape, like `leaderlock run` for a
// function instead of a process). Programs built on client-go's or controller-runtime's
// leader election use the sibling package leaderlock.dev/go/leaderelection instead.
package role
