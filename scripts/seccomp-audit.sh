#!/usr/bin/env bash
# Finds the system calls hearth's seccomp filters are missing, for a new device or
# thread: runs the given command (default: the whole test suite) with filters that log
# instead of trap (SECCOMP_RET_LOG), then lists each thread kind's logged calls from the
# kernel's audit lines. Add what it prints to resources/seccomp/<kind>.json (with argument
# rules where they matter). Needs root for dmesg.
set -euo pipefail
cd "$(dirname "$0")/.."

filters=$(mktemp /tmp/hearth-seccomp-audit.XXXXXX.json)
trap 'rm -f "$filters"' EXIT
{
  echo "{"
  first=1
  for f in resources/seccomp/*.json; do
    [ $first = 1 ] || echo ","
    first=0
    printf '"%s": ' "$(basename "$f" .json)"
    sed 's/"default_action": "trap"/"default_action": "log"/' "$f"
  done
  echo "}"
} > "$filters"

[ $# -gt 0 ] || set -- cargo test --workspace
since=$(awk '{print $1}' /proc/uptime)
HEARTH_SECCOMP_FILTER="$filters" "$@" || true

# audit: type=1326 ... comm="event-loop" exe=".../hearth" ... syscall=8 ...
dmesg | awk -v since="$since" '
  /type=1326/ && /hearth"/ {
    t = $0; sub(/^\[ */, "", t); sub(/\].*/, "", t)
    if (t + 0 < since + 0) next
    match($0, /comm="[^"]*"/); comm = substr($0, RSTART + 6, RLENGTH - 7)
    match($0, /syscall=[0-9]+/); nr = substr($0, RSTART + 8, RLENGTH - 8)
    print comm, nr
  }' | sort -u | while read -r comm nr; do
  name=$(awk -v nr="$nr" '$1 == "#define" && $3 == nr { sub("__NR_", "", $2); print $2 }' \
    /usr/include/x86_64-linux-gnu/asm/unistd_64.h 2>/dev/null | head -1)
  echo "$comm: $nr ${name:-?}"
done
