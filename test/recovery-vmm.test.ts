/**
 * vmm recovery with no guest reboot (issue 4 item 2): SIGKILL the vmm at
 * random moments while the `counter` guest runs forever; its keeper saves the
 * VM, a new vmm restores it, and the guest never notices: no @error (the guest
 * checks its register/memory counter and hash chain itself), the counter never
 * goes backwards or skips, every kill is followed by progress and by exactly
 * one "recovered vmm" line, and no vmm or keeper is left behind.
 */
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { spawn } from 'child_process';
import { abi } from '../native/kvm';
import { holdersOf, killRun, percentile, REPO } from './helpers/kill-harness';
import { requireKvm } from './helpers/tsvmm';

const KILLS = Number(process.env.TSVMM_RECOVERY_KILLS ?? 50);

describe('vmm recovery (SIGKILL the vmm, the guest keeps running)', function () {
  this.timeout(180_000);
  before(requireKvm);

  for (const cpus of [1, 2]) {
    it(`counter on ${cpus} vCPU${cpus > 1 ? 's' : ''}: ${KILLS} random SIGKILLs of the vmm, zero guest-visible errors`, async () => {
      const r = await killRun({
        cpus, kills: KILLS,
        // ~10-50 ms of counting per line: kills land both in guest code and in serial I/O exits.
        report: cpus === 1 ? 5_000_000 : 10_000_000,
        // ~2 kills/s: under the supervisor's restart-loop guard (30 failures in 10 s), which is lifted here anyway.
        minDelayMs: 50, maxDelayMs: 350,
        env: { TSVMM_RESTORE_DEBUG: '1' },
      });
      const pend: Record<string, number> = {};
      for (const l of r.restoreDebug) {
        const m = / pending=(\d+) exit=(\d+)/.exec(l);
        if (m) pend[`pending=${m[1]} exit=${m[2]}`] = (pend[`pending=${m[1]} exit=${m[2]}`] ?? 0) + 1;
      }
      const prog = r.samples.map((s) => s.progressMs);
      console.log(`      ${r.samples.length} recoveries: kill->progress p50 ${percentile(prog, 50).toFixed(0)} ms, max ${Math.max(...prog).toFixed(0)} ms; ` +
        `duplicate lines ${r.duplicates}; vCPU states at the kill: ${JSON.stringify(pend)}`);
      assert.deepStrictEqual(r.errors, [], 'the guest reported errors');
      assert.deepStrictEqual(r.malformed, [], 'torn or malformed serial lines');
      assert.deepStrictEqual(r.backwards, [], 'a counter went backwards or skipped');
      assert.strictEqual(r.samples.length, KILLS, 'progress after every kill');
      assert.strictEqual(r.recoveryLines, KILLS, `one recovery line per kill; other lines: ${r.stderr.split('\n').filter((l) => /hung|not a hang|recovered vmm \(cause: (?!signal SIGKILL)/.test(l)).join(' | ')}`);
      assert.strictEqual(r.lastN.length, cpus, 'every vCPU made progress');
      assert.deepStrictEqual(r.leftovers, [], 'a vmm or keeper was left behind');
    });
  }
});

describe('vmm recovery refuses a bad snapshot', function () {
  this.timeout(60_000);
  before(requireKvm);

  for (const standby of [false, true]) {
    it(`a snapshot whose checksum does not match stops the run with a clear error instead of resuming (${standby ? 'warm standby' : 'cold restart'})`, async () => {
      const name = `badsnap-${process.pid}-${standby ? 'warm' : 'cold'}`;
      const child = spawn(process.execPath, [path.join(REPO, 'bin', 'tsvmm.js'), 'run', '--name', name, ...(standby ? ['--standby'] : []),
        '--cmdline', 'workload=counter n=0 report=20000000'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      let out = '';
      child.stderr!.on('data', (d) => { err += d; });
      child.stdout!.on('data', (d) => { out += d; });
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      const until = async (cond: () => boolean) => { const t = Date.now(); while (!cond()) { if (Date.now() - t > 90_000) throw new Error(`timeout; stderr: ${err}`); await new Promise((r) => setTimeout(r, 10)); } };
      await until(() => /vmm ready \(pid \d+/.test(err) && out.includes('@counter') && (!standby || /vmm standby ready/.test(err)));
      const vmm = Number(/vmm ready \(pid (\d+)/.exec(err)![1]);
      // The keeper's pid is in the snapshot header (other processes may hold the memfd too).
      const tag = `tsvmm-snap-${name}`;
      const fd = fs.readdirSync(`/proc/${child.pid}/fd`).find((f) => { try { return fs.readlinkSync(`/proc/${child.pid}/fd/${f}`).includes(tag); } catch { return false; } })!;
      const snap = `/proc/${child.pid}/fd/${fd}`;
      const hdr = Buffer.alloc(4);
      const hfd = fs.openSync(snap, 'r');
      fs.readSync(hfd, hdr, 0, 4, abi('snap_off_h_keeper_pid'));
      const keeperPid = hdr.readUInt32LE(0);
      fs.readSync(hfd, hdr, 0, 4, abi('snap_off_h_generation'));
      const generation = hdr.readUInt32LE(0);
      fs.closeSync(hfd);
      assert.ok(keeperPid && keeperPid !== vmm && holdersOf(tag).includes(keeperPid), 'found the keeper');
      // Freeze the keeper so it cannot save, kill the vmm, then forge a "saved" header over a body that was
      // never written (the next generation, so a standby claims it when its futex wait times out).
      process.kill(keeperPid, 'SIGSTOP');
      process.kill(vmm, 'SIGKILL');
      const h = fs.openSync(snap, 'r+');
      const b = Buffer.alloc(4);
      b.writeUInt32LE(0xdeadbeef); fs.writeSync(h, b, 0, 4, abi('snap_off_h_checksum'));
      b.writeUInt32LE(generation + 1); fs.writeSync(h, b, 0, 4, abi('snap_off_h_generation'));
      b.writeUInt32LE(abi('snap_TSVMM_SNAP_SAVED')); fs.writeSync(h, b, 0, 4, abi('snap_off_h_state'));
      fs.closeSync(h);
      const code = await exited;
      try { process.kill(keeperPid, 'SIGKILL'); } catch { /* the supervisor killed it */ }
      assert.strictEqual(code, 1);
      // Both paths verify it once, in the native restore (native/kvm/restore.c).
      assert.match(err, /snapshot checksum mismatch: refusing to resume a corrupt guest/);
      assert.doesNotMatch(err, /\n\s+at /, 'no stack trace');
      await new Promise((r) => setTimeout(r, 200));
      assert.deepStrictEqual(holdersOf(tag), [], 'nothing left behind');
    });
  }
});
