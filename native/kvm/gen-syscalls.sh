#!/bin/sh
# Writes $1: one X(name) line per x86-64 system call, from the kernel headers' <asm/unistd_64.h>
# (the one definition of the numbers). seccomp.c turns each into {"name", __NR_name}.
set -e
echo '#include <asm/unistd_64.h>' | ${CC:-cc} -E -dM - | sed -n 's/^#define __NR_\([a-z0-9_]*\) .*/X(\1)/p' | sort > "$1.tmp"
mv "$1.tmp" "$1"
