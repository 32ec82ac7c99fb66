#!/usr/bin/env bash
# Builds the minimal guest kernel (Linux 6.1, ELF vmlinux with a PVH note) from Debian's
# linux-source-6.1 and puts it in OUTDIR/vmlinux. 4–8 minutes on 2 cores.
#
# Usage: build-kernel.sh [--no-patch] [OUTDIR]      (default OUTDIR: resources/linux/build)
#   --no-patch, or HEARTH_LINUX_PATCH=0: build without pvm-guest.patch (a stock 6.1 with
#     the same config; it does NOT boot on an emulating KVM, only on hardware).
#   HEARTH_LINUX_BUILD_DIR: where the source is unpacked (default resources/linux/build).
#
# pvm-guest.patch is applied by default, whatever the host: its four parts are harmless
# on hardware virtualization. Two are inactive there (the #PF syscall completion only
# matches a SYSCALL that stayed in user mode, impossible on hardware; apic_needs_pit()
# only changes how the APIC timer is calibrated in a VM: against the TSC, the kernel's
# own fallback, instead of a PIT), and two drop a boot self-test of int3 and an fwait
# that only discards stale x87 exceptions of a task whose FPU state is being dropped.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
patch_it=${HEARTH_LINUX_PATCH:-1}
outdir=
for arg in "$@"; do
  case "$arg" in
    --no-patch) patch_it=0 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "build-kernel.sh: unknown option $arg" >&2; exit 2 ;;
    *) [ -z "$outdir" ] || { echo "build-kernel.sh: one OUTDIR only" >&2; exit 2; }
       outdir=$arg ;;
  esac
done
outdir=${outdir:-$here/build}
builddir=${HEARTH_LINUX_BUILD_DIR:-$here/build}
tarball=/usr/src/linux-source-6.1.tar.xz

die() { echo "build-kernel.sh: $*" >&2; exit 1; }

need=()
for p in linux-source-6.1 flex bison bc libelf-dev gcc make xz-utils; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]} and no apt-get to install them"
  [ "$(id -u)" -eq 0 ] || die "missing ${need[*]}: run 'apt-get install -y ${need[*]}' as root"
  echo "build-kernel.sh: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq "${need[@]}" >&2 || die "apt-get install ${need[*]} failed"
fi
[ -f "$tarball" ] || die "$tarball not found (package linux-source-6.1)"

mkdir -p "$builddir" "$outdir"
src=$builddir/linux-source-6.1
stamp=$src/.hearth-source
# What the tree must be: this tarball, patched or not, with this patch.
want="$(stat -c '%s %Y' "$tarball") patch=$patch_it $(sha256sum < "$here/pvm-guest.patch" | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "build-kernel.sh: unpacking $tarball into $builddir" >&2
  rm -rf "$src"
  tar -xf "$tarball" -C "$builddir" || die "unpacking $tarball failed"
  [ -d "$src" ] || die "$tarball did not contain linux-source-6.1/"
  if [ "$patch_it" != 0 ]; then
    echo "build-kernel.sh: applying pvm-guest.patch" >&2
    patch -d "$src" -p1 --forward --batch --quiet < "$here/pvm-guest.patch" ||
      die "pvm-guest.patch does not apply to $(dpkg-query -W -f '${Version}' linux-source-6.1 2>/dev/null || echo 'this') linux-source-6.1 (made for 6.1.192)"
  fi
  echo "$want" > "$stamp"
fi

cp "$here/config-6.1-microvm" "$src/.config"
make -C "$src" -s olddefconfig
echo "build-kernel.sh: make -j$(nproc) vmlinux in $src (4–8 minutes on 2 cores)" >&2
make -C "$src" -s -j"$(nproc)" vmlinux || die "the kernel build failed"
cp "$src/vmlinux" "$outdir/vmlinux.tmp"
mv -f "$outdir/vmlinux.tmp" "$outdir/vmlinux"
echo "$outdir/vmlinux"
