#!/usr/bin/env bash
# Puts `tsvmm` on the PATH: a symlink $PREFIX/bin/tsvmm -> this checkout's bin/tsvmm.js
# (PREFIX defaults to /usr/local; run it again after moving the checkout). Node resolves the
# link, so tsvmm then works from any directory. Undo: rm "$PREFIX/bin/tsvmm".
set -euo pipefail
prefix=${PREFIX:-/usr/local}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -f "$root/dist/cli/main.js" ] || { echo "link.sh: $root is not built: run \`npm install\` first" >&2; exit 1; }
mkdir -p "$prefix/bin"
chmod 755 "$root/bin/tsvmm.js"
ln -sfn "$root/bin/tsvmm.js" "$prefix/bin/tsvmm"
case ":$PATH:" in
  *":$prefix/bin:"*) echo "tsvmm -> $prefix/bin/tsvmm ($("$prefix/bin/tsvmm" --version))" ;;
  *) echo "tsvmm -> $prefix/bin/tsvmm; $prefix/bin is not on your PATH: add it (export PATH=\"$prefix/bin:\$PATH\")" ;;
esac
