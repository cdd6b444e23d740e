/**
 * contracts/v8-flags.ts: every flag in the table is one this Node takes, the flags `tsvmm run` sets
 * on itself at run time do what they are there for (V8 reads most flags only when it sets a heap
 * up: one that did nothing at run time would be a silent no-op), and the TSVMM_V8_FLAGS_<PROCESS>
 * override replaces a process's flags and refuses anything but V8 tuning. The flags each running
 * component was started with are checked against the table in test/cli-verbs.test.ts.
 */
import { strict as assert } from 'assert';
import { spawnSync } from 'child_process';
import { COMPONENT_V8_FLAGS, SUPERVISOR_RUNTIME_V8_FLAGS, SpawnedComponent, componentExecArgv, supervisorRuntimeFlags, v8FlagsError } from '../contracts/v8-flags';
import { tsvmm } from './helpers/tsvmm';

/**
 * A Node that sets `flags` at run time, then allocates ~2 M short-lived objects through one hot
 * function: its young generation's size and that function's V8 optimization status.
 */
function afterRuntimeFlags(flags: readonly string[]): { newSpace: number; status: number } {
  const script = `
    const v8 = require('v8');
    for (const f of ${JSON.stringify(flags)}) v8.setFlagsFromString(f);
    function hot(o) { return o.a + o.b.length; }
    let s = 0; const keep = [];
    for (let i = 0; i < 2e6; i++) { const o = { a: i, b: [i, i + 1], c: 'x' + i }; s += hot(o); if (i % 1000 === 0) keep.push(o); }
    const ns = v8.getHeapSpaceStatistics().find((x) => x.space_name === 'new_space');
    process.stdout.write(JSON.stringify({ newSpace: ns.space_size, status: %GetOptimizationStatus(hot) }));`;
  const r = spawnSync(process.execPath, ['--allow-natives-syntax', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as { newSpace: number; status: number };
}

/** V8's optimization status bit for "optimized" (runtime-test-support: kOptimized). */
const OPTIMIZED = 16;

describe('V8 flags per process (contracts/v8-flags.ts)', function () {
  this.timeout(120_000);

  it('every spawned process\'s flags are ones this Node takes', () => {
    for (const [name, flags] of Object.entries(COMPONENT_V8_FLAGS)) {
      const r = spawnSync(process.execPath, [...flags, '-e', '0'], { encoding: 'utf8' });
      assert.equal(r.status, 0, `${name}: ${flags.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr, '', `${name}: ${flags.join(' ')}`);
    }
  });

  it('the flags tsvmm run sets on itself take effect at run time: no TurboFan, a young generation that does not grow', () => {
    const plain = afterRuntimeFlags([]);
    // The same program without them: the function is optimized, the young generation grows past
    // its initial 2 MiB (two 1 MiB semi-spaces); else this test could not tell.
    assert.ok(plain.status & OPTIMIZED, `status ${plain.status}`);
    assert.ok(plain.newSpace > 2 << 20, `new space ${plain.newSpace}`);
    const tuned = afterRuntimeFlags(SUPERVISOR_RUNTIME_V8_FLAGS);
    assert.equal(tuned.status & OPTIMIZED, 0, `status ${tuned.status}`);
    assert.equal(tuned.newSpace, 2 << 20);
  });

  it('TSVMM_V8_FLAGS_<PROCESS> replaces one process\'s flags, and only V8 tuning flags are taken', () => {
    assert.deepEqual(componentExecArgv('priv-domain', {}), COMPONENT_V8_FLAGS['priv-domain']);
    assert.deepEqual(componentExecArgv('driver-domain', { TSVMM_V8_FLAGS_DRIVER_DOMAIN: ' --max-semi-space-size=4  --v8-pool-size=1 ' }), ['--max-semi-space-size=4', '--v8-pool-size=1']);
    assert.deepEqual(componentExecArgv('priv-domain', { TSVMM_V8_FLAGS_PRIV_DOMAIN: '' }), []);
    assert.deepEqual(componentExecArgv('vmm', { TSVMM_V8_FLAGS_PRIV_DOMAIN: '' }), COMPONENT_V8_FLAGS.vmm);
    assert.deepEqual(supervisorRuntimeFlags({}), SUPERVISOR_RUNTIME_V8_FLAGS);
    assert.deepEqual(supervisorRuntimeFlags({ TSVMM_V8_FLAGS_SUPERVISOR: '--no-opt' }), ['--no-opt']);
    assert.equal(v8FlagsError({ TSVMM_V8_FLAGS_VMM: '--max-old-space-size=512 --lite-mode' }), undefined);
    for (const bad of ['--require=/tmp/x.js', '--inspect', '--inspect-brk=0', '-e', '--eval=1', '--import=x', 'lite-mode', '--max-old-space-size=1;x']) {
      const err = v8FlagsError({ TSVMM_V8_FLAGS_GUARDIAN: `--lite-mode ${bad}` });
      assert.ok(err?.startsWith('TSVMM_V8_FLAGS_GUARDIAN: '), `${bad}: ${err}`);
    }
    for (const c of Object.keys(COMPONENT_V8_FLAGS) as SpawnedComponent[]) {
      assert.deepEqual(componentExecArgv(c, {}), COMPONENT_V8_FLAGS[c]);
    }
  });

  it('tsvmm run refuses a bad override in one line, before it starts anything', () => {
    const r = tsvmm(['run', '--kernel', '/nonexistent'], { env: { TSVMM_V8_FLAGS_VMM: '--require=/tmp/evil.js' } });
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /^tsvmm: error: TSVMM_V8_FLAGS_VMM: '--require=\/tmp\/evil.js' is not a V8 tuning flag/);
  });
});

describe('malloc_trim once a component has settled (contracts/malloc-trim.ts)', () => {
  it('the addon has it (an addon built before it would make every component skip the trim silently)', () => {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { native } = require('../native/kvm') as typeof import('../native/kvm');
    assert.equal(typeof native.mallocTrim, 'function');
    assert.ok([0, 1].includes(native.mallocTrim!()));
  });
});
