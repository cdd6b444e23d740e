#!/usr/bin/env node
'use strict';
let cli;
try {
  cli = require('../dist/cli/main.js');
} catch (e) {
  process.stderr.write(`tsvmm: error: not built (${e.message.split('\n')[0]}): run \`npm install\`\n`);
  process.exit(1);
}
cli.main(process.argv.slice(2)).then((code) => process.exit(code));
