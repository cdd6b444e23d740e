/**
 * When `tsvmm run` itself (the supervisor) is SIGKILLed, none of its components runs on as an
 * orphan and none prints a stack trace: a new supervisor adopts the vmm and the driver-domain
 * (contracts/orphan.ts, supervisor/adopt.ts; the priv-domain exits and the new supervisor starts
 * one), and `tsvmm stop` then ends all of them. The new supervisor is started by the VM's guardian
 * (supervisor/guardian-main.ts), here itself killed first, and replaced, to show that a guardian
 * that dies is. (test/recovery-supervisor.test.ts does this 20 times under a verifying workload.)
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { requireKvm, tsvmm, tsvmmAsync } from './helpers/tsvmm';
import { readSupervisorPid, runRecordPath, vmPaths } from '../contracts/paths';
import { readRunRecord } from '../contracts/run-record';
import { flipRegister } from '../cli/inject';
import { COMPONENT_V8_FLAGS } from '../contracts/v8-flags';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Running (a zombie waiting for init to reap it is not). */
const alive = (pid: number): boolean => {
  try { return !/\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, 'latin1')); } catch { return false; }
};

/** The pid of the guardian of VM `name` (supervisor/guardian-main.ts NAME SUPERVISOR_PID). */
function guardianOf(name: string): number | undefined {
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    let argv: string[];
    try { argv = fs.readFileSync(`/proc/${d}/cmdline`, 'latin1').split('\0'); } catch { continue; }
    const i = argv.findIndex((a) => a.endsWith('guardian-main.js'));
    if (i >= 0 && argv[i + 1] === name && alive(Number(d))) return Number(d);
  }
  return undefined;
}

/**
 * `tsvmm run --name NAME` of this suite (with an 8 MiB disk where `disk`, so it has a
 * driver-domain): its stderr and stdout collected, and `ready(roles)` to wait for its components.
 */
function startVm(name: string, cmdline: string, o: { disk?: boolean; env?: NodeJS.ProcessEnv } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-supdeath-'));
  const img = path.join(dir, 'disk.img');
  if (o.disk) { fs.writeFileSync(img, ''); fs.truncateSync(img, 8 << 20); }
  const child = tsvmmAsync(['run', '--name', name, '--metrics-addr', 'none', ...(o.disk ? ['--disk', img] : []), '--cmdline', cmdline], o.env);
  const vm = {
    child, err: '', out: '', pids: {} as Record<string, number>,
    /** Waits (30 s at most) until each of `roles` said it is ready; their pids in `pids`. */
    async ready(roles: string[]): Promise<void> {
      for (const t0 = Date.now(); roles.some((r) => !vm.pids[r]) && Date.now() - t0 < 30_000; await sleep(50)) {
        for (const m of vm.err.matchAll(/(vmm|driver-domain|priv-domain) ready \(pid (\d+)\)/g)) vm.pids[m[1]] = Number(m[2]);
      }
      assert.deepEqual(roles.filter((r) => !vm.pids[r]), [], `not ready:\n${vm.err}`);
    },
    /** Ends whatever of the VM still runs and removes its disk. */
    cleanup(): void {
      if (Object.values(vm.pids).some(alive)) tsvmm(['stop', '--name', name, '--force']);
      for (const p of Object.values(vm.pids)) if (alive(p)) process.kill(p, 'SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  child.stderr.on('data', (d) => { vm.err += d; });
  child.stdout.on('data', (d) => { vm.out += d; });
  return vm;
}

/** `tsvmm stop` succeeds, every one of `pids` is gone within 10 s, and the VM's stderr has no stack trace. */
async function stopAndAssertGone(name: string, err: () => string, pids: Record<string, number>): Promise<void> {
  const stop = tsvmm(['stop', '--name', name]);
  assert.equal(stop.status, 0, stop.stderr);
  for (const t = Date.now(); Object.values(pids).some(alive) && Date.now() - t < 10_000;) await sleep(50);
  const left = Object.entries(pids).filter(([, p]) => alive(p));
  assert.deepEqual(left, [], `still running after stop: ${JSON.stringify(left)}`);
  assert.doesNotMatch(err(), /^\s+at /m, `a stack trace:\n${err()}`);
}

/** VM `name`'s guardian once it runs (10 s at most). */
async function guardianReady(name: string): Promise<number | undefined> {
  for (const t0 = Date.now(); Date.now() - t0 < 10_000; await sleep(50)) {
    const g = guardianOf(name);
    if (g) return g;
  }
  return undefined;
}

/** The supervisor that adopted VM `name` after `first` died (20 s at most), once it said so in `err()`. */
async function adopterOf(name: string, first: number, err: () => string): Promise<number | undefined> {
  for (const t0 = Date.now(); Date.now() - t0 < 20_000; await sleep(50)) {
    const sup = readSupervisorPid(name);
    if (sup && sup !== first && /recovered supervisor/.test(err())) return sup;
  }
  return undefined;
}

describe('the supervisor killed', function () {
  this.timeout(60_000);
  before(requireKvm);

  it('is replaced by one that adopts its vmm and driver-domain; stop then ends everything, without stack traces', async () => {
    const name = `supdeath-${process.pid}`;
    const vm = startVm(name, 'workload=counter n=0 report=50000000', { disk: true });
    const { pids } = vm;
    try {
      await vm.ready(['vmm', 'driver-domain', 'priv-domain']);
      // Its guardian killed first: the supervisor starts another.
      const g1 = guardianOf(name);
      assert.ok(g1, `no guardian for VM ${name}`);
      process.kill(g1, 'SIGKILL');
      let g2: number | undefined;
      for (let t = Date.now(); Date.now() - t < 10_000; await sleep(50)) {
        g2 = guardianOf(name);
        if (g2 && g2 !== g1 && /guardian \(pid \d+\) died \(signal SIGKILL\): starting a new one/.test(vm.err)) break;
      }
      assert.ok(g2 && g2 !== g1, `the guardian was not replaced:\n${vm.err}`);
      vm.child.kill('SIGKILL');
      const sup = await adopterOf(name, vm.child.pid!, () => vm.err);
      assert.ok(sup, `no new supervisor:\n${vm.err}`);
      // It runs with the adopting supervisor's V8 flags (contracts/v8-flags.ts).
      const argv = fs.readFileSync(`/proc/${sup}/cmdline`, 'latin1').split('\0').filter(Boolean);
      assert.deepEqual(argv.slice(1, argv.findIndex((a) => a.endsWith('adopt-main.js'))), COMPONENT_V8_FLAGS.supervisor, argv.join(' '));
      assert.ok(alive(pids.vmm) && alive(pids['driver-domain']), `the vmm and driver-domain were not adopted:\n${vm.err}`);
      await stopAndAssertGone(name, () => vm.err, { ...pids, supervisor: sup, guardian: g2 });
    } finally {
      vm.cleanup();
    }
  });

  // Without the guardian's watch of the supervisor's beat (supervisor/guardian-main.ts watchBeat): a
  // stopped or hung supervisor was never replaced, and the VM ran on with nobody to recover it.
  it('stopped, it is judged hung by its guardian, killed and replaced; so is the supervisor that adopted the VM', async () => {
    const name = `suphang-${process.pid}`;
    const vm = startVm(name, 'workload=counter n=0 report=50000000');
    try {
      await vm.ready(['vmm', 'priv-domain']);
      const vmmPid = vm.pids.vmm;
      assert.ok(await guardianReady(name), vm.err);
      let sup = vm.child.pid!;
      for (let round = 1; round <= 2; round++) {
        await sleep(300); // the supervisor has begun to beat, and its guardian to watch it
        process.kill(sup, 'SIGSTOP');
        const t = Date.now();
        let next: number | undefined;
        while (Date.now() - t < 20_000) {
          next = readSupervisorPid(name);
          if (next && next !== sup && vm.err.split('recovered supervisor (cause: hang)').length > round) break;
          await sleep(50);
        }
        assert.ok(next && next !== sup, `round ${round}: the stopped supervisor ${sup} was not replaced:\n${vm.err}`);
        assert.match(vm.err, new RegExp(`supervisor hung: no heartbeat for \\d+ ms \\(threshold 2000 ms; [^)]*state T\\); killing pid ${sup}`), vm.err);
        assert.ok(!alive(sup), `the hung supervisor ${sup} still runs`);
        assert.ok(alive(vmmPid), `round ${round}: the vmm was not adopted:\n${vm.err}`);
        sup = next;
      }
      await stopAndAssertGone(name, () => vm.err, { vmm: vmmPid, supervisor: sup });
    } finally {
      vm.cleanup();
    }
  });

  // Without the stop in the run record (proto StopRecord): the adopter ran the VM on, and the
  // operator's stop was undone by the crash of the supervisor that took it.
  it('a stop asked for before the supervisor dies is finished by the one that adopts the VM, not undone', async () => {
    const name = `supstop-${process.pid}`;
    const vm = startVm(name, 'workload=counter n=0 report=50000000 power_button=ignore');
    try {
      await vm.ready(['vmm', 'priv-domain']);
      const guardian = await guardianReady(name);
      assert.ok(guardian, vm.err);
      // The guest ignores the power button: the stop waits its 2 s, then stops the VM hard.
      const stop = tsvmmAsync(['stop', '--name', name, '--timeout', '2']);
      let stopOut = '';
      stop.stdout.on('data', (d) => { stopOut += d; });
      stop.stderr.on('data', (d) => { stopOut += d; });
      const stopped = new Promise<number | null>((r) => stop.on('exit', (code) => r(code)));
      for (const t0 = Date.now(); !/stop requested: pressed the power button/.test(vm.err) && Date.now() - t0 < 10_000;) await sleep(10);
      const rec = readRunRecord(vmPaths(name));
      assert.match(rec?.stop?.reason ?? '', /stopped through the API \(tsvmm stop\)/, 'the stop is in run.pb before it is answered');
      vm.child.kill('SIGKILL');
      assert.equal(await stopped, 0, stopOut);
      assert.match(stopOut, /stopped it hard \(finished by the supervisor that adopted the VM\)/, `${stopOut}\n${vm.err}`);
      for (const t0 = Date.now(); (alive(vm.pids.vmm) || alive(guardian) || fs.existsSync(vmPaths(name).runDir)) && Date.now() - t0 < 10_000;) await sleep(50);
      assert.ok(!alive(vm.pids.vmm) && !alive(guardian), `the VM runs on after its stop:\n${vm.err}`);
      assert.equal(fs.existsSync(vmPaths(name).runDir), false, 'stale runtime dir');
    } finally {
      vm.cleanup();
    }
  });

  // Without the confirmed wait (contracts/pidfd.ts waitExited, native/kvm/pidfd.cc): a flipped rax
  // in the adopter's thread that polled the driver-domain's pidfd ended that poll with a value no
  // poll returns, the wait took it for an exit "status unknown", and a second driver-domain was
  // started beside the live one; the two broke the disk's ring ("head 9 made available while still
  // in flight", fault campaign 6, item 20).
  it("an adopter's wait on a component, ended by a flipped register, is not taken for the component's death", async () => {
    const name = `supwait-${process.pid}`;
    const vm = startVm(name, 'workload=blk-loop blk_n=512 qd=8 mode=seq verify=1 blk_report=100', { disk: true });
    const progress = () => vm.out.split('@blk-progress').length;
    try {
      await vm.ready(['vmm', 'driver-domain', 'priv-domain']);
      assert.ok(await guardianReady(name), vm.err);
      vm.child.kill('SIGKILL');
      const sup = await adopterOf(name, vm.child.pid!, () => vm.err);
      assert.ok(sup, `no adopter:\n${vm.err}`);
      // Its threads blocked in poll (the pidfd waits on the vmm, the driver-domain and the keeper),
      // each caught in the syscall (-ERESTART_RESTARTBLOCK in rax) and flipped. Campaign 6 flipped
      // bit 35, which made poll return -516 with whatever errno was left; bit 31 makes it return a
      // count no poll of one fd returns, which ends the wait the same way every time.
      const RESTART = 0xfffffffffffffdfcn;
      const polling = fs.readdirSync(`/proc/${sup}/task`).filter((t) => /^(poll_schedule_timeout|do_sys_poll)/.test(fs.readFileSync(`/proc/${sup}/task/${t}/wchan`, 'latin1'))).map(Number);
      assert.ok(polling.length >= 2, `the adopter's pidfd waits: ${polling.length} threads in poll`);
      const logFile = /log\s+(\/\S+\.log)/.exec(vm.err)![1];
      const logAt = fs.statSync(logFile).size;
      const progressAt = progress();
      let flipped = 0;
      for (const tid of polling) {
        for (let k = 0; k < 20; k++) {
          const [b, a] = flipRegister(tid, 'rax', 31, (v) => v === RESTART);
          if (a !== b) { flipped++; break; }
        }
      }
      assert.ok(flipped >= 2, `flipped ${flipped} of ${polling.length} waits`);
      await sleep(2000); // a wait taken for an exit resolves 200 ms later, and a restart follows in ~1 s
      for (const t = Date.now(); progress() < progressAt + 3 && Date.now() - t < 10_000;) await sleep(50);
      // An adopter logs to the VM's log file only (its stderr is the guardian's).
      const logged = fs.readFileSync(logFile, 'utf8').slice(logAt);
      assert.doesNotMatch(logged, /recovered (vmm|driver-domain)|needs a reset/, `a component taken for dead while it ran:\n${logged}`);
      assert.ok(alive(vm.pids.vmm) && alive(vm.pids['driver-domain']), `the components were replaced:\n${logged}`);
      assert.ok(progress() >= progressAt + 3, `the guest's disk stopped:\n${logged}`);
      assert.doesNotMatch(vm.out, /@(blk-)?error/);
    } finally {
      vm.cleanup();
    }
  });

  it('with a run record no one can read, one adopter fails and says so, the guardian exits, the orphans end', async () => {
    // The guardian only looks whether the record is there (supervisor/guardian-main.ts): reading
    // it is the adopter's part. One that cannot removes the runtime dir and fails; the guardian must
    // then exit, not start adopter after adopter; the vmm and driver-domain, whose pids were in the
    // record, end by themselves once no one adopted them (their orphan timeout: 2 s here).
    const name = `supdeath2-${process.pid}`;
    const vm = startVm(name, 'workload=counter n=0 report=50000000', { disk: true, env: { TSVMM_ORPHAN_TIMEOUT_MS: '2000' } });
    try {
      await vm.ready(['vmm', 'driver-domain', 'priv-domain']);
      const guardian = await guardianReady(name);
      assert.ok(guardian, `no guardian for VM ${name}`);
      const paths = vmPaths(name);
      fs.writeFileSync(runRecordPath(paths), Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]));
      vm.child.kill('SIGKILL');
      const all = { ...vm.pids, guardian };
      for (const t0 = Date.now(); (Object.values(all).some(alive) || fs.existsSync(paths.runDir)) && Date.now() - t0 < 10_000;) await sleep(50);
      assert.deepEqual(Object.entries(all).filter(([, p]) => alive(p)), [], `still running:\n${vm.err}`);
      assert.equal(fs.existsSync(paths.runDir), false, 'stale runtime dir');
      assert.match(vm.err, /could not adopt VM .*: no run record.*its vmm and driver-domain once their orphan timeout/, vm.err);
      assert.equal(vm.err.split('\n').filter((l) => /could not adopt/.test(l)).length, 1, vm.err);
    } finally {
      vm.cleanup();
    }
  });
});
