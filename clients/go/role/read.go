package role

import (
	"errors"
	"io"
	"io/fs"
	"os"
)

// DefaultFile is where LeaderLock's examples mount the projection of metadata.annotations.
const DefaultFile = "/etc/leaderlock/annotations"

// readAttempts: a path lookup can race the kubelet's removal of its old timestamped directory;
// by the time the lookup fails, `..data` already points at the new one, so a retry succeeds.
const readAttempts = 3

// Read reads the role file at path once and returns the pod's role for lock. A file without
// the lock's annotation gives Status{Role: Absent} and no error. Errors are *Error.
func Read(path, lock string) (Status, error) {
	if err := ValidateLock(lock); err != nil {
		return Status{}, err
	}
	content, err := ReadFile(path)
	if err != nil {
		return Status{}, err
	}
	status, err := Parse(content, lock)
	if e, ok := err.(*Error); ok {
		e.Path = path
	}
	return status, err
}

// ReadFile reads the role file's bytes as the kubelet leaves it: a regular file, usually
// reached through its symlinks (annotations -> ..data/annotations -> timestamped directory).
// Anything else is refused before it is opened: opening a FIFO blocks until a writer appears,
// and a device may never end.
func ReadFile(path string) ([]byte, error) {
	for attempt := 1; ; attempt++ {
		content, err := readRegular(path)
		var e *Error
		if errors.As(err, &e) && e.Kind == Unreadable && errors.Is(e.Err, fs.ErrNotExist) && attempt < readAttempts {
			continue
		}
		return content, err
	}
}

func readRegular(path string) ([]byte, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, &Error{Kind: Unreadable, Path: path, Err: err}
	}
	if err := ensureRegular(path, info.Mode()); err != nil {
		return nil, err
	}
	// Should the path turn into a FIFO after the check, a non-blocking open still returns at
	// once; on a regular file the flags change nothing.
	file, err := os.OpenFile(path, os.O_RDONLY|openFlags, 0)
	if err != nil {
		return nil, &Error{Kind: Unreadable, Path: path, Err: err}
	}
	defer file.Close()
	if info, err = file.Stat(); err != nil {
		return nil, &Error{Kind: Unreadable, Path: path, Err: err}
	}
	if err := ensureRegular(path, info.Mode()); err != nil {
		return nil, err
	}
	content, err := io.ReadAll(file)
	if err != nil {
		return nil, &Error{Kind: Unreadable, Path: path, Err: err}
	}
	return content, nil
}

func ensureRegular(path string, mode fs.FileMode) error {
	if mode.IsRegular() {
		return nil
	}
	return &Error{Kind: NotRegular, Path: path, Detail: kindOf(mode)}
}

// kindOf names what a non-regular file is, for the error message.
func kindOf(mode fs.FileMode) string {
	switch {
	case mode.IsDir():
		return "a directory"
	case mode&fs.ModeNamedPipe != 0:
		return "a FIFO (named pipe)"
	case mode&fs.ModeSocket != 0:
		return "a socket"
	case mode&fs.ModeCharDevice != 0:
		return "a character device"
	case mode&fs.ModeDevice != 0:
		return "a block device"
	default:
		return "a special file"
	}
}
