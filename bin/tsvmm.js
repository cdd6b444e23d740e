#!/usr/bin/env node
'use strict';
let cli;
try {
  cli = require('../dist/cli/main.js');
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
