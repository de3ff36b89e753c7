//go:build unix

package role

import "syscall"

// openFlags: O_NONBLOCK so that a FIFO swapped in after the check cannot block the open, and
// O_NOCTTY so that a terminal never becomes the controlling one.
const openFlags = syscall.O_NONBLOCK | syscall.O_NOCTTY
