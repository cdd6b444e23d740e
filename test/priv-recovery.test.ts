/**
 * priv-domain recovery: SIGKILL the priv-domain at random moments, at least 50 times, while the
 * guest runs its verifying blk workload and while API clients are changing things.
 *   - guest I/O is unaffected: zero errors, progress continues;
 *   - every change the API acknowledged is still there afterwards (and after a priv-domain
 *     restart with nothing in flight);
 *   - a client that retries with an Idempotency-Key gets its change applied exactly once.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import { guestLines, requireKvm } from './helpers/tsvmm';
import { sleep, startVm, TestVm, runScenario } from './helpers/control-plane';
import { request } from '../cli/verbs';

const KILLS = Number(process.env.TSVMM_PRIV_KILLS ?? 50);

describe('priv-domain recovery', function () {
  this.timeout(300_000);
  before(requireKvm);
  let vm: TestVm | undefined;
  after(async () => {
    await vm?.stop();
    if (vm) fs.rmSync(vm.dir, { recursive: true, force: true });
  });

  it(`survives ${KILLS} SIGKILLs of the priv-domain with API calls in flight: guest unaffected, acknowledged changes kept, exactly-once retries`, async () => {
    await runScenario(async () => {
    await vm?.stop();
    vm = await startVm();
    const v = vm;
    try {
      await scenario(v);
    } catch (e) {
      await sleep(300);
      (e as { vm?: TestVm }).vm = v;
      throw e;
    }
    return v;
    });
  });
});

async function scenario(v: TestVm): Promise<void> {
  {
    const t0 = Date.now();
    while (v.progress() < 2 && Date.now() - t0 < 20_000) await sleep(50);
    assert.ok(v.progress() >= 2, `guest made no progress:\n${v.out()}\n${v.err()}`);

    const privPid = async (): Promise<number | undefined> => {
      try { return (JSON.parse((await request(v.socket, 'GET', '/v1/vm')).body) as { privDomainPid: number }).privDomainPid; } catch { return undefined; }
    };

    // Clients: each posts annotations with a unique Idempotency-Key and retries until it gets an
    // answer; a second kind sets labels. What was acknowledged is remembered.
    const acked = new Map<string, number>(); // annotation text -> id
    const ackedLabels = new Map<string, string>();
    let attempts = 0;
    let retries = 0;
    let running = true;
    const client = async (c: number) => {
      for (let i = 0; running; i++) {
        const text = `c${c}-n${i}`;
        const key = `key-${text}`;
        for (;;) {
          attempts++;
          try {
            const r = await request(v.socket, 'POST', '/v1/vm/annotations', { text }, { 'Idempotency-Key': key });
            if (r.status === 201) { acked.set(text, (JSON.parse(r.body) as { id: number }).id); break; }
            throw new Error(`HTTP ${r.status} ${r.body}`);
          } catch (e) {
            if (/HTTP [45]/.test((e as Error).message)) throw e;
            retries++;
            await sleep(10 + Math.random() * 20);
          }
        }
        // A label change, retried the same way.
        const lk = `l${c}`;
        for (;;) {
          try {
            const r = await request(v.socket, 'PUT', `/v1/vm/labels/${lk}`, { value: text }, { 'Idempotency-Key': `label-${text}` });
            if (r.status === 200) { ackedLabels.set(lk, text); break; }
            throw new Error(`HTTP ${r.status} ${r.body}`);
          } catch (e) {
            if (/HTTP [45]/.test((e as Error).message)) throw e;
            retries++;
            await sleep(10 + Math.random() * 20);
          }
        }
      }
    };
    const clients = [0, 1, 2, 3].map(client);

    let lastPid = await privPid();
    const killTimes: number[] = [];
    for (let k = 0; k < KILLS; k++) {
      // Wait for the current priv-domain to serve, then kill it at a random moment.
      const t1 = Date.now();
      let pid: number | undefined;
      while (Date.now() - t1 < 15_000) {
        pid = await privPid();
        if (pid && pid !== lastPid) break;
        if (k === 0 && pid) break;
        await sleep(5);
      }
      assert.ok(pid && (k === 0 || pid !== lastPid), `priv-domain not back after kill ${k}:\n${v.err().slice(-2000)}`);
      await sleep(Math.random() * 120);
      process.kill(pid!, 'SIGKILL');
      killTimes.push(Date.now());
      lastPid = pid;
    }
    // Let the clients finish what they have in flight.
    await sleep(1500);
    running = false;
    await Promise.all(clients);

    // The guest keeps going after the last kill, with no errors.
    const before = v.progress();
    const t2 = Date.now();
    while (v.progress() < before + 3 && Date.now() - t2 < 30_000) await sleep(50);
    assert.ok(v.progress() >= before + 3, 'guest stalled');
    const lines = guestLines(v.out());
    assert.ok(!lines.some((l) => l.word === 'error' || l.word === 'blk-error'), v.out().split('\n').filter((l) => /@(blk-)?error/.test(l)).slice(0, 5).join('\n'));
    assert.equal(lines.filter((l) => l.word === 'blk-progress').pop()!.fields.errors, '0');
    const recoveries = v.err().match(/recovered priv-domain/g)?.length ?? 0;
    assert.equal(recoveries, KILLS, v.err().slice(-3000));

    // Once more with nothing in flight: the store is what a fresh priv-domain reads.
    const p = await privPid();
    process.kill(p!, 'SIGKILL');
    const t3 = Date.now();
    while ((await privPid()) === undefined || (await privPid()) === p) { if (Date.now() - t3 > 15_000) break; await sleep(20); }

    const anns = JSON.parse((await request(v.socket, 'GET', '/v1/vm/annotations')).body) as { id: number; text: string }[];
    const byText = new Map<string, number[]>();
    for (const a of anns) byText.set(a.text, [...(byText.get(a.text) ?? []), a.id]);
    // Exactly once: no text twice, however many times it was retried.
    for (const [text, ids] of byText) assert.equal(ids.length, 1, `${text} applied ${ids.length} times`);
    // Every acknowledged change is there, with the id the client was given.
    for (const [text, id] of acked) assert.deepEqual(byText.get(text), [id], `acknowledged ${text} (id ${id}) lost`);
    const labels = JSON.parse((await request(v.socket, 'GET', '/v1/vm/labels')).body) as Record<string, string>;
    for (const [k, val] of ackedLabels) assert.equal(labels[k], val, `label ${k}`);
    assert.ok(acked.size >= 50, `only ${acked.size} changes acknowledged`);
    assert.ok(retries > 0, 'no request was ever interrupted: the test did not test retries');
    console.log(`      ${KILLS} kills; ${acked.size} annotations + ${ackedLabels.size} labels acknowledged; ${attempts} annotation attempts, ${retries} retries; ${anns.length} stored`);
  }
}
