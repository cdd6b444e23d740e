#!/usr/bin/env bash
# Regenerates contracts/seccomp-allowlists.ts: runs test files (default: the ones that exercise every
# component's paths, recoveries included) under `strace -f` with TSVMM_SECCOMP=record, then keeps,
# per component, the system calls it made once confined (scripts/record-syscalls.js).
#   bash scripts/record-syscalls.sh [dist/test/X.test.js ...]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v strace >/dev/null || { echo "record-syscalls: strace is not installed (scripts/install-deps.sh installs it)" >&2; exit 1; }
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(dist/test/run.test.js dist/test/blk.test.js dist/test/net.test.js dist/test/cli-verbs.test.js
  dist/test/priv-recovery.test.js dist/test/metrics.test.js dist/test/recovery-vmm.test.js dist/test/recovery-standby.test.js
  dist/test/recovery-blk-kill.test.js dist/test/recovery-failures.test.js dist/test/recovery-mmio-replay.test.js)
# Never the attack tests (dist/test/confinement.test.js): what they try must stay outside the lists.
dir=$(mktemp -d /tmp/tsvmm-record-XXXXXX)
traces=()
for f in "${files[@]}"; do
  t="$dir/$(basename "$f").trace"
  echo "record-syscalls: $f" >&2
  TSVMM_SECCOMP=record strace -f -qq -s 200 -o "$t" -- node node_modules/.bin/mocha --no-config --timeout 300000 "$f" >"$t.out" 2>&1 || echo "record-syscalls: $f failed under strace (its calls are recorded all the same; see $t.out)" >&2
  traces+=("$t")
done
node scripts/record-syscalls.js "${traces[@]}" > contracts/seccomp-allowlists.ts.new
mv contracts/seccomp-allowlists.ts.new contracts/seccomp-allowlists.ts
[ -n "${KEEP_TRACES:-}" ] || rm -rf "$dir"
echo "record-syscalls: wrote contracts/seccomp-allowlists.ts" >&2
