#!/usr/bin/env bash
# Host packages the build and the tests need, from Debian. Installs only
# what is missing, so it is cheap to run again.
#   gcc/make/binutils: the native addon and the test guest
#   acpica-tools: iasl, to check the generated ACPI tables
#   iproute2: TAP devices and network namespaces for the virtio-net tests
#   iputils-ping: the host's ping through the TAP
#   util-linux: runuser, for the permission tests
#   prometheus: promtool, to check the metrics output
#   qemu-system-x86: the emulated hardware-KVM host (emulated-host/, npm run emulated-host) the Linux tests run in
#   e2fsprogs: mke2fs, for the ext4 root disk of `tsvmm image linux` (the Linux tests mount it)
#   strace: scripts/record-syscalls.sh, which regenerates the seccomp allowlists
set -euo pipefail
need=()
for pair in gcc:gcc make:make ld:binutils iasl:acpica-tools ip:iproute2 ping:iputils-ping runuser:util-linux promtool:prometheus qemu-system-x86_64:qemu-system-x86 mke2fs:e2fsprogs strace:strace; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
# The Linux tests fetch Debian's kernel and busybox with `apt-get download` (nothing installed): that
# needs the package lists, which a fresh container may not have.
lists=0
apt-cache show linux-image-cloud-amd64 busybox-static >/dev/null 2>&1 || lists=1
if [ ${#need[@]} -gt 0 ] || [ $lists -eq 1 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${need[*]:-the package lists}; run as root or: sudo apt-get update && sudo apt-get install -y ${need[*]:-}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  [ ${#need[@]} -eq 0 ] || apt-get install -y -qq "${need[@]}" >/dev/null
fi
