#!/usr/bin/env bash
# Puts the guest kernel at OUTDIR/vmlinux: a symlink to the cached build in
# ../shared/linux-guest (next to the repository) when its SHA-256 matches that folder's
# SHA256SUMS, otherwise a fresh build with build-kernel.sh (4–8 minutes).
# The initramfs is not taken from the cache: build-initramfs.sh makes it in a second,
# with the /init whose marker line the tests look for.
#
# Usage: get-kernel.sh [OUTDIR]      (default: resources/linux/build)
#   HEARTH_LINUX_CACHE: the cache folder (default: <repo>/../shared/linux-guest)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
outdir=${1:-$here/build}
cache=${HEARTH_LINUX_CACHE:-$repo/../shared/linux-guest}

mkdir -p "$outdir"
if [ -f "$cache/vmlinux" ] && [ -f "$cache/SHA256SUMS" ]; then
  want=$(awk '$2 == "vmlinux" || $2 == "*vmlinux" { print $1 }' "$cache/SHA256SUMS")
  have=$(sha256sum "$cache/vmlinux" | cut -d' ' -f1)
  if [ -n "$want" ] && [ "$want" = "$have" ]; then
    cached=$(cd "$cache" && pwd)/vmlinux
    ln -sfn "$cached" "$outdir/vmlinux"
    echo "$outdir/vmlinux -> $cached (checksum ok)"
    exit 0
  fi
  echo "get-kernel.sh: $cache/vmlinux does not match its SHA256SUMS; building instead" >&2
else
  echo "get-kernel.sh: no cached kernel in $cache; building it (4–8 minutes)" >&2
fi
# A regular file left by an earlier build is overwritten by the (incremental) build.
exec "$here/build-kernel.sh" "$outdir"
