// Command mutex takes an etcd lock with Go's concurrency.Mutex.Lock (watch-based waiting) and
// holds it until stdin closes or SIGTERM, then unlocks. Tests use it to prove LeaderLock's keys
// interoperate with etcd's own recipe; benchmarks use it as a peer.
//
// Output lines: "waiting <key>" once its key exists, "acquired <key> <create-revision>" on lock,
// "released" after unlock.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated etcd endpoints")
	prefix := flag.String("prefix", "/mutex/lock", "lock prefix")
	ttl := flag.Int("ttl", 15, "session lease TTL in seconds")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { // closing stdin releases the lock, so a test can drive us through a pipe
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()

	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(*endpoints, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(1)
	}
	defer cli.Close()
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(*ttl))
	if err != nil {
		fmt.Fprintln(os.Stderr, "session:", err)
		os.Exit(1)
	}
	defer sess.Close()

	m := concurrency.NewMutex(sess, *prefix)
	key := fmt.Sprintf("%s/%x", strings.TrimSuffix(*prefix, "/"), sess.Lease())
	fmt.Println("waiting", key)
	if err := m.Lock(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "lock:", err)
		os.Exit(1)
	}
	resp, err := cli.Get(ctx, m.Key())
	rev := int64(0)
	if err == nil && len(resp.Kvs) == 1 {
		rev = resp.Kvs[0].CreateRevision
	}
	fmt.Println("acquired", m.Key(), rev)
	<-ctx.Done()
	uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Unlock(uctx); err != nil {
		fmt.Fprintln(os.Stderr, "unlock:", err)
		os.Exit(1)
	}
	fmt.Println("released")
}
