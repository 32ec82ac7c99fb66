#!/usr/bin/env bash
# Builds hearth and a guest, then boots it: the test guest where KVM emulates guest
# kernel mode (as on this project's machines), the Linux guest where KVM is native.
# Usage: scripts/boot-demo.sh [test-guest|linux]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v gcc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

target=x86_64-unknown-linux-musl
if ! rustup target list --installed 2>/dev/null | grep -qx $target && ! rustup target add $target; then
  echo "the musl target cannot be installed: building against glibc" >&2
  target=x86_64-unknown-linux-gnu
fi
cargo build --release --bin hearth --target $target
hearth=target/$target/release/hearth

guest=${1:-}
if [ -z "$guest" ]; then
  if $hearth info | grep -q "execution: native"; then guest=linux; else guest=test-guest; fi
fi

case "$guest" in
  test-guest)
    make -s -C resources/test-guest O="$PWD/target/test-guest"
    echo "== booting the test guest (it prints what it found and exits with status 0) ==" >&2
    exec $hearth run --kernel target/test-guest/test-guest.elf --cpus 2 --memory 256M \
      --cmdline "console=ttyS0 exit=0" --verbose
    ;;
  linux)
    resources/linux/get-kernel.sh target/linux-guest
    resources/linux/build-initramfs.sh target/linux-guest
    echo "== booting Linux to a busybox /init (about a minute on an emulating KVM) ==" >&2
    exec $hearth run --kernel target/linux-guest/vmlinux --initrd target/linux-guest/initramfs.cpio \
      --memory 256M --cmdline "console=ttyS0 reboot=k panic=-1" --verbose
    ;;
  *) echo "usage: $0 [test-guest|linux]" >&2; exit 2 ;;
esac
