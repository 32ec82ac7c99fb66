#!/usr/bin/env bash
# Builds OUTDIR/initramfs.cpio: an uncompressed newc cpio with a static busybox, the
# few applet links /init uses, /bin/hearth-vsock (hearth-vsock.c, the tests' vsock end),
# /dev/console and /init (init.sh next to this script).
# Uncompressed on purpose: on an emulating KVM gunzip in the guest costs ~40 s.
# Needs busybox-static, cpio and gcc (Debian packages, installed here when missing).
# Usage: build-initramfs.sh [OUTDIR]   (default: resources/linux/build)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
outdir=${1:-$here/build}
busybox=/bin/busybox
applets=(sh mount umount echo cat grep ls uname reboot poweroff mkdir sleep dmesg)

die() { echo "build-initramfs.sh: $*" >&2; exit 1; }

need=()
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v "${CC:-gcc}" >/dev/null 2>&1 || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]} and no apt-get to install them"
  [ "$(id -u)" -eq 0 ] || die "missing ${need[*]}: run 'apt-get install -y ${need[*]}' as root"
  echo "build-initramfs.sh: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq "${need[@]}" >&2 || die "apt-get install ${need[*]} failed"
fi
[ -x "$busybox" ] || die "$busybox not found (package busybox-static)"
# A dynamically linked busybox would need its libraries in the initramfs.
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked; install busybox-static"
fi

mkdir -p "$outdir"
stage=$(mktemp -d "${TMPDIR:-/tmp}/hearth-initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT

root=$stage/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc}
cp "$busybox" "$root/bin/busybox"
for a in "${applets[@]}"; do
  ln -s busybox "$root/bin/$a"
done
install -m 0755 "$here/init.sh" "$root/init"
# Freestanding (no libc): a few KiB instead of a static libc's ~700 KiB, which the
# emulated guest kernel would have to unpack at every boot.
"${CC:-gcc}" -static -nostdlib -ffreestanding -fno-builtin -fno-stack-protector -fno-pic \
  -no-pie -Os -s -Wall -Wextra -Werror -o "$root/bin/hearth-vsock" "$here/hearth-vsock.c" ||
  die "compiling hearth-vsock.c failed"

# newc header for one entry: name, mode (octal), rdev major, rdev minor. Device nodes
# are written by hand so that building needs no root (mknod).
newc_node() {
  local name=$1 mode=$2 major=$3 minor=$4 ino=$5
  local namesize=$((${#name} + 1))
  # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    "$ino" $((8#$mode)) 0 0 1 0 0 0 0 "$major" "$minor" "$namesize" 0
  printf '%s\0' "$name"
  # Pad header (110 bytes) plus name to a multiple of 4.
  local pad=$(((4 - (110 + namesize) % 4) % 4))
  head -c "$pad" /dev/zero
}

out=$outdir/initramfs.cpio
tmp=$outdir/.initramfs.cpio.$$
{
  # The files: ordinary newc, owned by root, mtimes fixed for reproducibility.
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | sed 's,^\./,,' |
    cpio --quiet -o -H newc -R 0:0 --reproducible)
  # A second archive with /dev/console (char 5:1) and /dev/null (char 1:3); the kernel
  # unpacks concatenated archives and needs the console node to give /init its console;
  # the shell opens /dev/null as the stdin of a command it runs in the background.
  newc_node dev/console 020600 5 1 1
  newc_node dev/null 020666 1 3 2
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    0 0 0 0 1 0 0 0 0 0 0 11 0
  printf 'TRAILER!!!\0'
  head -c 3 /dev/zero # 110 + 11 + 3 = 124, a multiple of 4
} > "$tmp" || { rm -f "$tmp"; die "writing the archive failed"; }
mv -f "$tmp" "$out"
echo "$out ($(stat -c %s "$out") bytes)"
