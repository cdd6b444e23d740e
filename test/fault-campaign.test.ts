/**
 * A short sample of the fault-injection campaign (bench/campaign.ts, issue 16): one run per
 * fail-stop fault and component, plus a garbled message into the vmm and the driver-domain, and a
 * dead keeper followed by a vmm failure. Every run must end detected and recovered: no VM lost, no
 * guest-visible error, no bad block in the image, no silent failure. (The full campaign, with the
 * bit flips, is a benchmark: docs/fault-injection.md.)
 */
import * as assert from 'assert';
import { classify, plan, runOne, RunRecord, wilson } from '../bench/campaign';
import { InjectComponent, InjectKind } from '../cli/inject';
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
