package role

import "time"

// SetSafetyReread shortens the Watcher's safety re-read for a test; the returned function
// restores it, once every Watcher started meanwhile is closed.
func SetSafetyReread(d time.Duration) (restore func()) {
	saved := safetyReread
	safetyReread = d
	return func() { safetyReread = saved }
}
