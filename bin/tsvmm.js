#!/usr/bin/env node
'use strict';
const fs = require('fs');
const path = require('path');
// The CLI's esbuild bundle (scripts/bundle.js) while it is at least as new as its tsc output (one
// file to load instead of ~100 modules, with V8's code cache: `tsvmm run` starts sooner), else the
// tsc output itself.
function entry() {
  const dist = path.join(__dirname, '..', 'dist', 'cli');
  try {
    if (fs.statSync(path.join(dist, 'main.bundle.js')).mtimeMs >= fs.statSync(path.join(dist, 'main.js')).mtimeMs) return path.join(dist, 'main.bundle.js');
  } catch { /* no bundle */ }
  return path.join(dist, 'main.js');
}
let cli;
try {
  const file = entry();
  // The bundle through contracts/bundle-loader.ts: compiled from its V8 code cache (scripts/bundle.js).
  cli = file.endsWith('.bundle.js') ? require(path.join(__dirname, '..', 'dist', 'contracts', 'bundle-loader.js')).runBundle(file) : require(file);
} catch (e) {
  process.stderr.write(`tsvmm: error: not built (${e.message.split('\n')[0]}): run \`npm install\`\n`);
  process.exit(1);
}
// Exit only once stdout and stderr have drained: `tsvmm console --no-follow | wc -c` must count
// every byte (process.exit drops what a slow pipe has not taken yet). A write's callback runs
// once it and everything before it is flushed.
cli.main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
  process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
});
