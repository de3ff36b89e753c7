package role

import (
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Group is the API group of every annotation LeaderLock writes.
const Group = "leaderlock.dev"

// The two role values the controller writes.
const (
	leaderValue  = "leader"
	standbyValue = "standby"
)

// MaxLockNameLen bounds lock names so that leaderlock.dev/<lock>.token stays a valid key.
const MaxLockNameLen = 50

// Role is a pod's role for one lock.
type Role int

const (
	// Absent: the file has no annotation for the lock, so the pod is not (yet, or any more) a
	// candidate: not Running and Ready, or not selected by a LeaderLock.
	Absent Role = iota
	// Standby: a candidate that does not hold the lock.
	Standby
	// Leader: the pod holds the lock.
	Leader
)

func (r Role) String() string {
	switch r {
	case Leader:
		return leaderValue
	case Standby:
		return standbyValue
	default:
		return "absent"
	}
}

// Status is a pod's role for one lock as one read of the file found it.
type Status struct {
	Role Role
	// Token is the fencing token while leader, when the file carries it (the projection of
	// metadata.annotations does, a single-value file does not); 0 when unknown. Tokens are etcd
	// create revisions: positive, and strictly increasing from holder to holder of a lock.
	Token int64
	// Renewal is the controller's renewal when the file carries it (the projection of
	// metadata.annotations, on a pod leading a lock of a LeaderLock with renewDeadlineSeconds);
	// the zero Renewal otherwise. It concerns every lock the pod leads, so it is read whichever
	// lock is asked for.
	Renewal Renewal
}

// RenewedKey is the annotation holding the controller's renewal of a leading pod, "<D> <mark>"
// (e.g. "15s 1764839100123"; docs/contract.md §3.1): a leader role counts only until D after a
// new mark was read.
const RenewedKey = Group + "/roles.renewed"

// MaxRenewDeadline bounds the deadline a renewal may state: far above any sensible setting, and
// low enough that no timer overflows. A larger one is not what the controller writes.
const MaxRenewDeadline = 24 * time.Hour

// Renewal is one value of RenewedKey.
type Renewal struct {
	// Deadline is how long a leader role stays valid after a new Mark was read.
	Deadline time.Duration
	// Mark is the controller's clock in milliseconds, as written; only ever compared for change.
	Mark string
}

// IsSet tells whether the file carried a renewal.
func (r Renewal) IsSet() bool { return r.Mark != "" }

// sameRole tells whether two reads say the same role and token, whatever their renewal.
func (s Status) sameRole(other Status) bool { return s.Role == other.Role && s.Token == other.Token }

// IsLeader tells whether the pod holds the lock.
func (s Status) IsLeader() bool { return s.Role == Leader }

// TokenString is the token in decimal, or "" when it is unknown.
func (s Status) TokenString() string {
	if s.Token <= 0 {
		return ""
	}
	return strconv.FormatInt(s.Token, 10)
}

// String is the line `leaderlock role` prints ("leader 18233", "leader", "standby"), or
// "absent" when the file has no annotation for the lock.
func (s Status) String() string {
	if s.Role == Leader && s.Token > 0 {
		return leaderValue + " " + s.TokenString()
	}
	return s.Role.String()
}

// describe is the wording of the helper's logs.
func (s Status) describe() string {
	switch {
	case s.Role == Leader && s.Token > 0:
		return "leader (fencing token " + s.TokenString() + ")"
	case s.Role == Absent:
		return "no annotation (not a candidate)"
	default:
		return s.Role.String()
	}
}

// RoleKey is the annotation holding the role for a lock: leaderlock.dev/<lock>.
func RoleKey(lock string) string { return Group + "/" + lock }

// TokenKey is the annotation holding the holder's fencing token: leaderlock.dev/<lock>.token.
func TokenKey(lock string) string { return Group + "/" + lock + ".token" }

// ValidateLock accepts a lock name as spec.locks[].name does: a DNS-1123 label of at most 50
// characters. Catching a typo here beats waiting forever for an annotation that cannot exist.
func ValidateLock(name string) error {
	valid := name != "" && len(name) <= MaxLockNameLen && name[0] != '-' && name[len(name)-1] != '-'
	for i := 0; valid && i < len(name); i++ {
		c := name[i]
		valid = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-'
	}
	if !valid {
		return &Error{Kind: InvalidLock, Lock: name}
	}
	return nil
}

// Parse reads the role for lock from a role file's content (pure: no file access). It returns
// Status{Role: Absent} when the file has no annotation for the lock, and an *Error when the
// lock name is invalid or the content is not something the kubelet writes.
func Parse(content []byte, lock string) (Status, error) {
	if err := ValidateLock(lock); err != nil {
		return Status{}, err
	}
	if !utf8.Valid(content) {
		return Status{}, &Error{Kind: NotUTF8}
	}
	text := string(content)
	// A line with `="` means the projection of metadata.annotations: no role value contains
	// that sequence. (`="` cannot span a line break, so looking at the whole text is the same.)
	if strings.Contains(text, `="`) {
		annotations, err := parseAnnotations(text)
		if err != nil {
			return Status{}, err
		}
		// The renewal first, whichever lock is asked for, as the Rust helper does.
		renewal, err := renewalFromAnnotations(annotations)
		if err != nil {
			return Status{}, err
		}
		status, err := roleFromAnnotations(annotations, lock)
		status.Renewal = renewal
		return status, err
	}
	// The projection of a single annotation; the kubelet writes an absent one as an empty file.
	value := strings.TrimSpace(text)
	if value == "" {
		return Status{Role: Absent}, nil
	}
	return roleFromValue(value, 0)
}

// ParseAnnotations parses the projection of metadata.annotations: one key="value" line per
// annotation, as the kubelet writes them (`%v=%q` lines, sorted, no final newline). Blank lines
// are skipped; a key that repeats keeps its last value.
func ParseAnnotations(content []byte) (map[string]string, error) {
	if !utf8.Valid(content) {
		return nil, &Error{Kind: NotUTF8}
	}
	return parseAnnotations(string(content))
}

func parseAnnotations(text string) (map[string]string, error) {
	annotations := make(map[string]string)
	// Split on '\n' alone: a '\r' before it stays part of the line (and so fails the quoting),
	// as it does in the Rust helper. No bufio.Scanner: it refuses lines over 64 KiB.
	for index, line := range strings.Split(text, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		// Annotation keys cannot contain '=', so the first one ends the key.
		key, quoted, found := strings.Cut(line, "=")
		if !found || key == "" || strings.ContainsFunc(key, unicode.IsSpace) {
			return nil, &Error{Kind: NotKeyValue, Line: index + 1, Text: line}
		}
		// strconv.Unquote is the exact inverse of the kubelet's %q: it takes every escape Go
		// writes (\a \b \f \n \r \t \v \\ \" \xNN \NNN \uNNNN \UNNNNNNNN) and nothing else.
		value, err := strconv.Unquote(quoted)
		if err != nil || !strings.HasPrefix(quoted, `"`) {
			return nil, &Error{Kind: BadQuote, Line: index + 1, Text: line}
		}
		annotations[key] = value
	}
	return annotations, nil
}

func renewalFromAnnotations(annotations map[string]string) (Renewal, error) {
	value, ok := annotations[RenewedKey]
	if !ok {
		return Renewal{}, nil
	}
	return parseRenewal(value)
}

// parseRenewal parses "<D> <mark>": D a duration of the helper's flag syntax written as a
// decimal number with at most three digits after the point, then "ms", "s", "m", "h" or nothing
// for seconds, above 0 and at most MaxRenewDeadline; one space; mark decimal digits. The shape
// is checked before strconv.ParseFloat, which also reads hex and exponents, so that this package
// accepts exactly the values the Rust helper does; with at most three decimals, rounding the
// product to nanoseconds gives both the exact value.
func parseRenewal(value string) (Renewal, error) {
	bad := &Error{Kind: BadRenewal, Text: value}
	deadline, mark, found := strings.Cut(value, " ")
	if !found || !allDigits(mark) {
		return Renewal{}, bad
	}
	number, scale := deadline, 1.0
	for _, unit := range []struct {
		suffix string
		scale  float64
	}{{"ms", 0.001}, {"s", 1}, {"m", 60}, {"h", 3600}} {
		if cut, ok := strings.CutSuffix(deadline, unit.suffix); ok {
			number, scale = cut, unit.scale
			break
		}
	}
	whole, fraction, hasPoint := strings.Cut(number, ".")
	if !hasPoint {
		fraction = "0"
	}
	if !allDigits(whole) || !allDigits(fraction) || len(fraction) > 3 {
		return Renewal{}, bad
	}
	parsed, err := strconv.ParseFloat(number, 64)
	seconds := parsed * scale
	// The first bound keeps the conversion below in range.
	if err != nil || seconds > 2*MaxRenewDeadline.Seconds() {
		return Renewal{}, bad
	}
	d := time.Duration(math.Round(seconds * 1e9))
	if d <= 0 || d > MaxRenewDeadline {
		return Renewal{}, bad
	}
	return Renewal{Deadline: d, Mark: mark}, nil
}

// allDigits: one ASCII digit or more, and nothing else.
func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func roleFromAnnotations(annotations map[string]string, lock string) (Status, error) {
	value, ok := annotations[RoleKey(lock)]
	if !ok {
		return Status{Role: Absent}, nil
	}
	// The token is checked whenever present, before the role, as the Rust helper does.
	var token int64
	if text, ok := annotations[TokenKey(lock)]; ok {
		parsed, err := strconv.ParseInt(text, 10, 64)
		if err != nil || parsed <= 0 {
			return Status{}, &Error{Kind: BadToken, Text: text}
		}
		token = parsed
	}
	return roleFromValue(value, token)
}

func roleFromValue(value string, token int64) (Status, error) {
	switch value {
	case leaderValue:
		return Status{Role: Leader, Token: token}, nil
	case standbyValue:
		return Status{Role: Standby}, nil
	default:
		return Status{}, &Error{Kind: UnknownRole, Text: value}
	}
}
