// Command trylock reproduces the incident LeaderLock exists for: a candidate that polls
// concurrency.Mutex.TryLock on a timer. Every failed try writes a Put (inside a Txn) and a
// Delete, so etcd's revision climbs while nothing changes. Kept for tests and benchmarks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
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
	prefix := flag.String("prefix", "/trylock/lock", "lock prefix")
	candidates := flag.Int("candidates", 1, "number of polling candidates in this process")
	interval := flag.Duration("interval", 100*time.Millisecond, "time between TryLock attempts")
	duration := flag.Duration("duration", 0, "stop after this long (0: until SIGTERM)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(*endpoints, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(1)
	}
	defer cli.Close()

	done := make(chan struct{})
	for i := 0; i < *candidates; i++ {
		go func(i int) {
			defer func() { done <- struct{}{} }()
			poll(ctx, cli, *prefix, *interval, i)
		}(i)
	}
	fmt.Println("ready")
	for i := 0; i < *candidates; i++ {
		<-done
	}
}

// poll tries the lock every interval; a winner holds it until ctx ends.
func poll(ctx context.Context, cli *clientv3.Client, prefix string, interval time.Duration, id int) {
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(15))
	if err != nil {
		fmt.Fprintln(os.Stderr, "session:", err)
		return
	}
	defer sess.Close()
	m := concurrency.NewMutex(sess, prefix)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		err := m.TryLock(ctx)
		if err == nil {
			fmt.Printf("acquired %d %s %d\n", id, m.Key(), m.Header().Revision)
			<-ctx.Done()
			return
		}
		if !errors.Is(err, concurrency.ErrLocked) && ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, "trylock:", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
