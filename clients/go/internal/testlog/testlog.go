// Package testlog records a logger's messages for tests, so that a test can wait for a line
// instead of sleeping.
package testlog

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Recorder is a slog.Handler that keeps every message, at every level (attributes are
// dropped).
type Recorder struct {
	mu       sync.Mutex
	messages []string
	added    chan struct{} // a value after every message, for waiters
}

// New returns an empty Recorder.
func New() *Recorder { return &Recorder{added: make(chan struct{}, 1)} }

// Logger is a logger that writes to r.
func (r *Recorder) Logger() *slog.Logger { return slog.New(r) }

func (r *Recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *Recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *Recorder) WithGroup(string) slog.Handler            { return r }

func (r *Recorder) Handle(_ context.Context, record slog.Record) error {
	r.mu.Lock()
	r.messages = append(r.messages, record.Message)
	r.mu.Unlock()
	select {
	case r.added <- struct{}{}:
	default:
	}
	return nil
}

// Count is how many messages contain part.
func (r *Recorder) Count(part string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.messages {
		if strings.Contains(m, part) {
			n++
		}
	}
	return n
}

// All is every message so far.
func (r *Recorder) All() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.messages)
}

// WaitFor waits until n messages contain part, failing t after patience.
func (r *Recorder) WaitFor(t testing.TB, part string, n int, patience time.Duration) {
	t.Helper()
	deadline := time.After(patience)
	for r.Count(part) < n {
		select {
		case <-r.added:
		case <-deadline:
			t.Fatalf("fewer than %d log lines with %q within %v: %q", n, part, patience, r.All())
		}
	}
}
