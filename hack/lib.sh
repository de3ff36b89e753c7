# Shared helpers for LeaderLock's scripts. Source it; it sets nothing global but functions and paths.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Tool builds are cached outside the clone so fresh clones on the same machine reuse them.
CACHE_DIR="${LEADERLOCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leaderlock}"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31mERROR:\033[0m %s\n' "$*" >&2; exit 1; }

# bin_dir_for MODULE_DIR: cache folder for one Go wrapper module, keyed on its go.mod+go.sum.
bin_dir_for() {
  local mod="$1" key
  key="$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-16)"
  echo "$CACHE_DIR/bin/$(basename "$mod")-$key"
}

# running PID: the process exists and is not a zombie (a killed server waiting to be reaped).
running() {
  local stat
  [[ "$1" =~ ^[0-9]+$ ]] || return 1 # an empty PID would read /proc//stat, the system's
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ "${stat##*) }" != Z* ]]
}
