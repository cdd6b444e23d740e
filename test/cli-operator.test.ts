/**
 * The CLI an operator meets first: --version, each verb's own --help, the documented exit
 * statuses for usage errors, and `scripts/link.sh` putting tsvmm on the PATH so it works from
 * any directory. (Guest failure = 3: test/run.test.ts; stopped on request = 130:
 * test/openapi.test.ts; run's banner: test/console.test.ts.)
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { ROOT, tsvmm } from './helpers/tsvmm';
import { VERBS } from '../cli/verbs';

describe('tsvmm CLI for operators', function () {
  this.timeout(60_000);
  const version = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

  it('--version, -V and version print the package version', () => {
    for (const a of ['--version', '-V', 'version']) {
      const r = tsvmm([a]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^tsvmm ${version.replace(/\./g, '\\.')}( \\(commit [0-9a-f]+\\))? node v\\d+`));
    }
  });

  it('every verb has its own --help, on stdout, exit 0', () => {
    for (const v of [...VERBS, 'run', 'image']) {
      const r = tsvmm([v, '--help']);
      assert.equal(r.status, 0, `${v}: ${r.stderr}`);
      assert.match(r.stdout, new RegExp(`^usage: tsvmm ${v}\\b`), v);
    }
  });

  it('usage errors exit 2 with one line, and say where the help is', () => {
    for (const args of [['ps', 'extra'], ['kill'], ['nonsense'], ['run', '--bogus']]) {
      const r = tsvmm(args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    }
    assert.match(tsvmm(['ps', 'extra']).stderr, /tsvmm ps --help/);
  });

  it('scripts/link.sh puts tsvmm on the PATH; it then works from any directory', () => {
    const prefix = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-link-'));
    try {
      const l = spawnSync('bash', [path.join(ROOT, 'scripts', 'link.sh')], { env: { ...process.env, PREFIX: prefix }, encoding: 'utf8' });
      assert.equal(l.status, 0, l.stderr);
      const r = spawnSync('tsvmm', ['--version'], { cwd: '/', env: { ...process.env, PATH: `${prefix}/bin:${process.env.PATH}` }, encoding: 'utf8' });
      assert.equal(r.status, 0, `${r.error ?? ''} ${r.stderr}`);
      assert.match(r.stdout, new RegExp(`^tsvmm ${version.replace(/\./g, '\\.')}`));
    } finally {
      fs.rmSync(prefix, { recursive: true, force: true });
    }
  });
});
