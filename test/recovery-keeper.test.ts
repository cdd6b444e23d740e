/**
 * The keeper is supervised (issue 14): a keeper killed, or stopped, under a running vmm is
 * detected, reported (log line, recovery record in `tsvmm ps` / metrics) and replaced by a new
 * one the vmm clones, so the vmm's next death is still survived. Each round kills the keeper, waits
 * for the new one, then kills the vmm; the guest's verifying disk workload must see no error.
 * bench/recovery.ts --keeper runs the same for 20 rounds.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import { requireKvm } from './helpers/tsvmm';
import { components, sleep, startVm, TestVm, runScenario, waitComponents } from './helpers/control-plane';
import { guestErrors } from './helpers/fault-harness';

const ROUNDS = Number(process.env.TSVMM_KEEPER_ROUNDS ?? 3);

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

/** Kills (or stops) the keeper, waits for its replacement, then kills the vmm and waits for it to be back with a keeper. */
export async function keeperThenVmm(vm: TestVm, how: 'SIGKILL' | 'SIGSTOP'): Promise<void> {
  const before = await waitComponents(vm, 'a running vmm with a keeper', (c) => c.vmm?.pid > 0 && c.keeper?.pid > 0 && c.keeper.state === 'running');
  const k = before.keeper.pid;
  const v = before.vmm.pid;
  if (how === 'SIGKILL') process.kill(k, 'SIGKILL');
  else {
    const r = vm.cli(['kill', 'keeper', '--name', vm.name, '--signal', 'SIGSTOP']);
    assert.equal(r.status, 0, `tsvmm kill keeper --signal SIGSTOP: ${r.stderr}`);
  }
  await waitComponents(vm, `a new keeper after ${how} of keeper ${k}`, (c) => c.keeper?.pid > 0 && c.keeper.pid !== k && c.vmm?.pid === v);
  // No hidden keeper left behind: the old one is gone (a stopped one was killed and reaped).
  for (let i = 0; i < 100 && alive(k); i++) await sleep(20);
  assert.ok(!alive(k), `keeper ${k} still exists after ${how}`);
  const progress = vm.progress();
  process.kill(v, 'SIGKILL');
  await waitComponents(vm, `a new vmm after vmm ${v} was killed`, (c) => c.vmm?.pid > 0 && c.vmm.pid !== v && c.keeper?.pid > 0);
  for (let i = 0; i < 500 && vm.progress() <= progress; i++) await sleep(20);
  assert.ok(vm.progress() > progress, 'no guest progress after the vmm recovered');
}

describe('keeper supervision', function () {
  this.timeout(240_000);
  before(requireKvm);
  let vm: TestVm | undefined;
  after(async () => {
    await vm?.stop();
    if (vm) fs.rmSync(vm.dir, { recursive: true, force: true });
  });

  it(`keeper killed (and once stopped), then the vmm killed, x${ROUNDS}: each keeper replaced, each vmm recovered, zero guest errors`, async () => {
    await runScenario(async () => {
      vm = await startVm({ name: `resilience-keeper-${process.pid}` });
      const v = vm;
      try {
        for (let i = 0; i < ROUNDS; i++) await keeperThenVmm(v, i === ROUNDS - 1 ? 'SIGSTOP' : 'SIGKILL');
        const c = await components(v);
        assert.ok(c.keeper.restarts >= ROUNDS, `keeper restarts ${c.keeper.restarts}`);
        const recovered = v.err().split('\n').filter((l) => /recovered keeper \(cause: (signal SIGKILL|hang)\)/.test(l));
        assert.equal(recovered.length, ROUNDS, v.err());
        const ms = recovered.map((l) => Number(/ in ([\d.]+) ms/.exec(l)?.[1])).sort((a, b) => a - b);
        console.log(`      keeper death -> new keeper armed: p50 ${ms[Math.floor(ms.length / 2)].toFixed(1)} ms, max ${ms[ms.length - 1].toFixed(1)} ms (SIGSTOP: threshold + that)`);
        assert.match(v.err(), /keeper hung: stopped for \d+ ms \(.*state T\)/);
        // Each recovery is in the event log too (`tsvmm events`).
        const recoveryEvents = (component: string) => {
          const e = v.cli(['events', '--name', v.name, '--json']);
          return e.status === 0 ? (JSON.parse(e.stdout) as { kind: string; detail: { component?: string } }[]).filter((x) => x.kind === 'recovery' && x.detail.component === component).length : -1;
        };
        for (let i = 0; i < 50 && recoveryEvents('vmm') < ROUNDS; i++) await sleep(100);
        assert.equal(recoveryEvents('keeper'), ROUNDS);
        assert.equal(recoveryEvents('vmm'), ROUNDS);
        assert.deepEqual(guestErrors(v.out()), []);
      } catch (e) {
        (e as { vm?: TestVm }).vm = v;
        throw e;
      }
      return v;
    });
  });
});
