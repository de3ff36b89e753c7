//go:build !unix

package role

// openFlags: no extra flags where the platform has none; pods run on Linux.
const openFlags = 0
