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
	snapshot, err := ReadSnapshot(path, lock)
	return snapshot.Status, err
}

// Snapshot is one read of the role file: the role, and which update of the file was read. The
// kubelet writes every update of a downward-API volume into a new directory, so an update is a
// new file (another device and inode) even when this file's text did not change (another item
// of the volume did); a file rewritten in place shows as new text. Two reads of one update are
// the same update, whatever woke the reader up. Compare snapshots with [Snapshot.SameUpdate]
// (== does not compile).
type Snapshot struct {
	_ [0]func() // not comparable: see SameUpdate

	Status Status

	content string
	file    os.FileInfo // of the file read, after the symlinks: os.SameFile compares device and inode
}

// SameUpdate tells whether s and other are reads of one update of the file: the same text in
// the same file (device and inode of the file the path resolved to). A zero Snapshot is the
// same update as none.
func (s Snapshot) SameUpdate(other Snapshot) bool {
	return s.file != nil && other.file != nil && s.content == other.content && os.SameFile(s.file, other.file)
}

// ReadSnapshot reads the role file at path once, as [Read] does, and tells which update of the
// file it read.
func ReadSnapshot(path, lock string) (Snapshot, error) {
	if err := ValidateLock(lock); err != nil {
		return Snapshot{}, err
	}
	content, info, err := readFile(path)
	if err != nil {
		return Snapshot{}, err
	}
	status, err := Parse(content, lock)
	if err != nil {
		if e, ok := err.(*Error); ok {
			e.Path = path
		}
		return Snapshot{}, err
	}
	return Snapshot{Status: status, content: string(content), file: info}, nil
}

// ReadFile reads the role file's bytes as the kubelet leaves it: a regular file, usually
// reached through its symlinks (annotations -> ..data/annotations -> timestamped directory).
// Anything else is refused before it is opened: opening a FIFO blocks until a writer appears,
// and a device may never end.
func ReadFile(path string) ([]byte, error) {
	content, _, err := readFile(path)
	return content, err
}

// readFile is ReadFile, with the file's information (of the file read, after the symlinks).
func readFile(path string) ([]byte, os.FileInfo, error) {
	for attempt := 1; ; attempt++ {
		content, info, err := readRegular(path)
		var e *Error
		if errors.As(err, &e) && e.Kind == Unreadable && errors.Is(e.Err, fs.ErrNotExist) && attempt < readAttempts {
			continue
		}
		return content, info, err
	}
}

func readRegular(path string) ([]byte, os.FileInfo, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, nil, &Error{Kind: Unreadable, Path: path, Err: err}
	}
	if err := ensureRegular(path, info.Mode()); err != nil {
		return nil, nil, err
	}
	// Should the path turn into a FIFO after the check, a non-blocking open still returns at
	// once; on a regular file the flags change nothing.
	file, err := os.OpenFile(path, os.O_RDONLY|openFlags, 0)
	if err != nil {
		return nil, nil, &Error{Kind: Unreadable, Path: path, Err: err}
	}
	defer file.Close()
	// The information of the file opened, not of the path: that is the file read.
	if info, err = file.Stat(); err != nil {
		return nil, nil, &Error{Kind: Unreadable, Path: path, Err: err}
	}
	if err := ensureRegular(path, info.Mode()); err != nil {
		return nil, nil, err
	}
	content, err := io.ReadAll(file)
	if err != nil {
		return nil, nil, &Error{Kind: Unreadable, Path: path, Err: err}
	}
	return content, info, nil
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
