#!/bin/sh
# /init of hearth's busybox initramfs (resources/linux/build-initramfs.sh).
# Prints one marker line that tests look for, then reboots: with the kernel's
# `reboot=k` that is a reset through the i8042, and hearth exits with status 0.
# Kept to few processes: on an emulating KVM every fork/exec costs guest kernel time.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
read -r release < /proc/sys/kernel/osrelease
cpus=$(grep -c '^processor' /proc/cpuinfo)
read -r uptime _ < /proc/uptime
echo "hearth-linux-guest: init reached release=$release cpus=$cpus uptime=${uptime}s"
# hearth.vsock=PORT on the command line: serve vsock port PORT in the background
# (hearth-vsock.c: echo, and `dial P TEXT` to reach the host's port P).
# hearth.count=N: count to N on the console, a second apart, first (the snapshot tests
# stop and restore a Linux guest that is counting).
read -r cmdline < /proc/cmdline
n=
for arg in $cmdline; do
  case $arg in
    hearth.vsock=*) /bin/hearth-vsock "${arg#hearth.vsock=}" & ;;
    hearth.count=*) n=${arg#hearth.count=} ;;
  esac
done
if [ -n "$n" ]; then
  i=0
  while [ "$i" -lt "$n" ]; do
    i=$((i + 1))
    echo "count: $i"
    sleep 1
  done
  echo "hearth-linux-guest: counted to $n"
fi
reboot -f
# Only reached if the reboot system call failed.
echo "hearth-linux-guest: reboot failed"
exec sh
