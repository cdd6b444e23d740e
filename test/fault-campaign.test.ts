/**
 * A short sample of the fault-injection campaign (bench/campaign.ts, issue 16): one run per
 * fail-stop fault and component, plus a garbled message into the vmm and the driver-domain, and a
 * dead keeper followed by a vmm failure. Every run must end detected and recovered: no VM lost, no
 * guest-visible error, no bad block in the image, no silent failure. (The full campaign, with the
 * bit flips, is a benchmark: docs/fault-injection.md.)
 */
import * as assert from 'assert';
import { classify, expectedEffect, plan, runOne, RunRecord, underTodaysRules, wilson } from '../bench/campaign';
import { InjectComponent, InjectKind, InjectResult } from '../cli/inject';
import { kvmUnavailable, skipBecause } from './helpers/tsvmm';

describe('fault-injection campaign sample: fail-stop faults are detected and recovered', function () {
  this.timeout(180_000);
  before(function () { const why = kvmUnavailable(); if (why) skipBecause(this, why); });

  it('classifies as the seed did', () => {
    assert.strictEqual(classify(false, []), 'not-manifested');
    assert.strictEqual(classify(true, []), 'recovered');
    assert.strictEqual(classify(true, ['@blk-error ...']), 'not-recovered');
    assert.strictEqual(classify(false, ['@blk-error ...']), 'silent');
    const [lo, hi] = wilson(99, 100);
    assert.ok(lo > 0.94 && lo < 0.96 && hi > 0.99 && hi <= 1, `${lo} ${hi}`);
  });

  it('counts a fault\'s expected effect on its device as contained only once its detector fired (EXPECTED)', () => {
    const ioerr = ['@blk-error op=write sector=8 what=status status=1 gen=2', '@blk-progress pass=1 done=300 errors=1'];
    const eioLog = ['tsvmm driver-domain: disk 0 I/O error: write at sector 8: write: errno 5; the guest got S_IOERR'];
    // Detected: the one failed request is the fault's effect.
    let e = expectedEffect('eio', eioLog, ioerr);
    assert.deepStrictEqual([e.expected.length, e.rest, e.contained], [2, [], true]);
    assert.strictEqual(classify(true, e.rest, e.contained), 'contained');
    // No log named it: the same error is silent.
    e = expectedEffect('eio', [], ioerr);
    assert.strictEqual(classify(false, e.rest, e.contained), 'silent');
    // A second failed request, or a bad block, is not the effect of one EIO.
    e = expectedEffect('eio', eioLog, [...ioerr, '@blk-error op=read sector=16 what=status status=1 gen=2', '@blk-error op=read sector=24 what=crc status=0 gen=2']);
    assert.strictEqual(e.rest.length, 2);
    assert.strictEqual(classify(true, e.rest, e.contained), 'not-recovered');
    // A vanished TAP: the echo stream stopping is expected; the rest of the guest stalling is not.
    const tapLog = ['tsvmm driver-domain: net 1: its TAP t0 vanished under the VM (deleted on the host; ...)'];
    e = expectedEffect('tap-vanish', tapLog, ['echo stopped: @echo sent=9 got=9 -> @echo sent=99 got=20', "no guest progress in the 3000 ms window's last 1.5 s and 8 s after"]);
    assert.deepStrictEqual(e.rest, ["no guest progress in the 3000 ms window's last 1.5 s and 8 s after"]);
    // A broken ring: the attacked disk's errors are expected; a VM lost is not.
    const ringLog = ["tsvmm driver-domain: disk 0 needs a reset (DEVICE_NEEDS_RESET: the guest's ring is malformed: avail idx moved from 1 to 900, more than queue size 256): ..."];
    e = expectedEffect('ring', ringLog, ['@blk-error op=reap what=bad_used_id id=140 len=0', '@error what=blk detail=timeout inflight=1 waited_s=10', 'VM lost: tsvmm exited {"code":3}']);
    assert.deepStrictEqual(e.rest, ['VM lost: tsvmm exited {"code":3}']);
    // A cut disk (at 0x386000 = sector 7216): reads of blocks reaching past the cut failing is
    // expected; a failed read below it, or a block read back wrong, is not.
    const cutLog = ['tsvmm driver-domain: disk 0 image shrank under the VM from 16777216 to 3694592 bytes (truncated outside tsvmm): ...'];
    const cut: InjectResult = { component: 'driver-domain', kind: 'disk-truncate', pid: 1, target: 'disk image', before: '0x1000000', after: '0x386000' };
    const past = ['@blk-error op=read sector=7216 what=status status=1 gen=385', '@blk-error op=read sector=7212 what=status status=1 gen=385', '@blk-progress pass=290 done=1500 errors=17'];
    e = expectedEffect('disk-truncate', cutLog, past, cut);
    assert.deepStrictEqual([e.rest, e.contained], [[], true]);
    e = expectedEffect('disk-truncate', cutLog, [...past, '@blk-error op=read sector=7200 what=status status=1 gen=385', '@blk-error op=read sector=7304 what=magic status=0 gen=385'], cut);
    assert.deepStrictEqual(e.rest, ['@blk-error op=read sector=7200 what=status status=1 gen=385', '@blk-error op=read sector=7304 what=magic status=0 gen=385']);
    assert.strictEqual(expectedEffect('disk-truncate', cutLog, past).contained, false, 'no cut recorded: nothing can be expected');
    // A record saved before the rule is classified by it when read (readRecords).
    const old: RunRecord = { seed: 7, run: 341, at: '', component: 'driver-domain', kind: 'disk-truncate', workload: 'blk-loop', cpus: 1, delayMs: 0, injected: cut, outcome: 'not-recovered', detected: true, detectors: cutLog, symptoms: past, wallMs: 0 };
    assert.strictEqual(underTodaysRules(old).outcome, 'contained');
    assert.strictEqual(underTodaysRules({ ...old, symptoms: [...past, 'VM lost: tsvmm exited {"code":3}'] }).outcome, 'not-recovered');
    // Kinds without an expected effect are unchanged.
    e = expectedEffect('SIGKILL', eioLog, ioerr);
    assert.deepStrictEqual([e.rest, e.contained], [ioerr, false]);
  });

  const sample: [InjectComponent, InjectKind][] = [
    ['vmm', 'SIGKILL'], ['vmm', 'SIGSTOP'], ['driver-domain', 'SIGSEGV'], ['driver-domain', 'SIGABRT'],
    ['priv-domain', 'SIGKILL'], ['priv-domain', 'SIGSTOP'], ['keeper', 'SIGKILL'], ['vmm', 'message'], ['driver-domain', 'message'],
  ];
  for (const [i, [component, kind]] of sample.entries()) {
    it(`${component} ${kind}: detected and recovered, nothing lost`, async () => {
      const p = { ...plan(16, i, [[component, kind]]) };
      const r: RunRecord = await runOne(16, i, p, { windowMs: 2000, probe: true, tag: `fault-sample-${process.pid}` });
      const why = JSON.stringify({ outcome: r.outcome, symptoms: r.symptoms, detectors: r.detectors, injected: r.injected, error: r.injectError });
      assert.strictEqual(r.injectError, undefined, why);
      assert.notStrictEqual(r.outcome, 'silent', why);
      assert.notStrictEqual(r.outcome, 'not-recovered', why);
      // A dead keeper is found by the vmm (it arms a new one); the probe then shows recovery still works.
      assert.strictEqual(r.probe, 'recovered', why);
      if (kind !== 'SIGSTOP' || component !== 'priv-domain') assert.ok(r.detected, why);
    });
  }
});
