package role

import (
	"errors"
	"fmt"
	"strconv"
)

// ErrorKind says why a lock name or a role file cannot be used. Its String is the error class
// the shared test vectors (testdata/rolefile/vectors.json) name.
type ErrorKind int

const (
	// InvalidLock: the lock name is not a DNS-1123 label of at most 50 characters.
	InvalidLock ErrorKind = iota + 1
	// Unreadable: the file is missing or cannot be read (see Error.Err).
	Unreadable
	// NotRegular: the path is a FIFO, a directory, a socket or a device (see Error.Detail).
	NotRegular
	// NotUTF8: the content is not UTF-8.
	NotUTF8
	// NotKeyValue: in the projection of metadata.annotations, a line that is not key="value".
	NotKeyValue
	// BadQuote: in the projection of metadata.annotations, a value that is not Go-quoted.
	BadQuote
	// UnknownRole: the role is neither "leader" nor "standby".
	UnknownRole
	// BadToken: the fencing token is not a positive 64-bit integer.
	BadToken
	// BadRenewal: the controller's renewal (RenewedKey) is not "<D> <mark>" as it writes it.
	BadRenewal
)

var kindNames = map[ErrorKind]string{
	InvalidLock: "invalid_lock",
	Unreadable:  "unreadable",
	NotRegular:  "not_regular",
	NotUTF8:     "not_utf8",
	NotKeyValue: "not_key_value",
	BadQuote:    "bad_quote",
	UnknownRole: "unknown_role",
	BadToken:    "bad_token",
	BadRenewal:  "bad_renewal",
}

func (k ErrorKind) String() string {
	if name, ok := kindNames[k]; ok {
		return name
	}
	return "ErrorKind(" + strconv.Itoa(int(k)) + ")"
}

// Error is every error of this package about a lock name or a role file.
type Error struct {
	Kind ErrorKind
	// Path is the role file, when one was read.
	Path string
	// Lock is the refused name (InvalidLock).
	Lock string
	// Line is the 1-based line (NotKeyValue, BadQuote).
	Line int
	// Text is the offending line (NotKeyValue, BadQuote) or value (UnknownRole, BadToken,
	// BadRenewal).
	Text string
	// Detail is what the path is instead of a regular file (NotRegular), e.g. "a FIFO (named pipe)".
	Detail string
	// Err is the underlying I/O error (Unreadable).
	Err error
}

func (e *Error) Unwrap() error { return e.Err }

func (e *Error) Error() string {
	path := e.Path
	if path == "" {
		path = "the role file"
	}
	switch e.Kind {
	case InvalidLock:
		return fmt.Sprintf("%q is not a lock name: use a DNS-1123 label (a-z, 0-9 and '-', not at either end, at most %d characters), as in spec.locks[].name", e.Lock, MaxLockNameLen)
	case Unreadable:
		return fmt.Sprintf("cannot read the role file %s: %v; mount the downward-API volume there or point the program at it", path, e.Err)
	case NotRegular:
		return fmt.Sprintf("%s is %s, not a regular file: point the program at the downward-API file (a regular file, or the kubelet's symlink to one)", path, e.Detail)
	}
	var reason string
	switch e.Kind {
	case NotUTF8:
		reason = "the content is not UTF-8"
	case NotKeyValue:
		reason = fmt.Sprintf("line %d is not key=\"value\": %q", e.Line, e.Text)
	case BadQuote:
		reason = fmt.Sprintf("line %d has a value that is not quoted as Go's %%q quotes it: %q", e.Line, e.Text)
	case UnknownRole:
		reason = fmt.Sprintf("role %q is neither \"leader\" nor \"standby\"", e.Text)
	case BadToken:
		reason = fmt.Sprintf("fencing token %q is not a positive integer", e.Text)
	case BadRenewal:
		reason = fmt.Sprintf("renewal %q (%s) is not \"<deadline> <mark>\" (a duration above 0 and at most 24h such as 15s, one space, decimal digits); only the controller writes it: use a version of this package that matches the controller's", e.Text, RenewedKey)
	default:
		reason = e.Kind.String()
	}
	return fmt.Sprintf("%s is not a downward-API projection of metadata.annotations or of metadata.annotations['leaderlock.dev/<lock>']: %s", path, reason)
}

// KindOf returns the kind of an *Error in err's chain, or 0.
func KindOf(err error) ErrorKind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}
