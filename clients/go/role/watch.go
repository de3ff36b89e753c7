package role

import (
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// safetyReread is how long a Watcher waits without a notification before it reports a change
// anyway, in case one was lost. A variable only so that the package's tests can shorten it.
var safetyReread = 60 * time.Second

// Watcher follows one lock's role in a role file. It watches the file's directory, not the
// file: the kubelet refreshes a downward-API volume by writing a new timestamped directory and
// renaming a `..data_tmp` symlink over `..data`, so the file itself (a symlink into the old
// directory) never reports a change of its own.
type Watcher struct {
	path, lock string
	notify     *fsnotify.Watcher
	changes    chan struct{}
	done       chan struct{}
	closeOnce  sync.Once
	wg         sync.WaitGroup
}

// NewWatcher starts watching path's directory for lock. Watching starts before the first Read,
// so that no update can slip in between. Close it when done.
func NewWatcher(path, lock string) (*Watcher, error) {
	if err := ValidateLock(lock); err != nil {
		return nil, err
	}
	notify, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("cannot watch for changes of the role file %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if err := notify.Add(dir); err != nil {
		notify.Close()
		return nil, fmt.Errorf("cannot watch %s for changes of the role file: %w; check that the directory exists", dir, err)
	}
	w := &Watcher{
		path:    path,
		lock:    lock,
		notify:  notify,
		changes: make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	w.wg.Add(1)
	go w.loop()
	return w, nil
}

// Read reads the role now (see [Read]).
func (w *Watcher) Read() (Status, error) { return Read(w.path, w.lock) }

// ReadSnapshot reads the role now, and which update of the file it is (see [ReadSnapshot]).
func (w *Watcher) ReadSnapshot() (Snapshot, error) { return ReadSnapshot(w.path, w.lock) }

// Path is the role file.
func (w *Watcher) Path() string { return w.path }

// Changes receives a value once the directory changed, or when 60 s passed without a
// notification. A burst of events, like the kubelet's create-directory, create-symlink,
// rename, remove-directory, collapses into one value while nobody receives; a value can come
// without any change of the role, so read it again and compare.
func (w *Watcher) Changes() <-chan struct{} { return w.changes }

// Close stops watching. Changes receives nothing more.
func (w *Watcher) Close() error {
	var err error
	w.closeOnce.Do(func() {
		close(w.done)
		err = w.notify.Close()
		w.wg.Wait()
	})
	return err
}

func (w *Watcher) loop() {
	defer w.wg.Done()
	events, errs := w.notify.Events, w.notify.Errors
	timer := time.NewTimer(safetyReread)
	defer timer.Stop()
	for {
		select {
		case <-w.done:
			return
		case _, ok := <-events:
			if !ok {
				// Notifications stopped: only the safety re-read is left.
				events = nil
				continue
			}
		case _, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// An error such as a queue overflow may have lost an event: re-read.
		case <-timer.C:
		}
		// Only directory changes and writes are reported (fsnotify leaves out opens and
		// reads, so our own reads never wake us).
		select {
		case w.changes <- struct{}{}:
		default:
		}
		timer.Reset(safetyReread)
	}
}
