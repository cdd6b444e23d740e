#!/usr/bin/env bash
# Host packages the build and the tests need, from Debian. Installs only
# what is missing, so it is cheap to run again.
#   gcc/make/binutils: the native addon and the test guest
#   acpica-tools: iasl, to check the generated ACPI tables
#   iproute2: TAP devices and network namespaces for the virtio-net tests
#   iputils-ping: the host's ping through the TAP
#   util-linux: runuser, for the permission tests
#   prometheus: promtool, to check the metrics output
#   qemu-system-x86: the emulated hardware-KVM host (scripts/emulated-host.js) the Linux tests run in
#   strace: scripts/record-syscalls.sh, which regenerates the seccomp allowlists
set -euo pipefail
need=()
for pair in gcc:gcc make:make ld:binutils iasl:acpica-tools ip:iproute2 ping:iputils-ping runuser:util-linux promtool:prometheus qemu-system-x86_64:qemu-system-x86 strace:strace; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
