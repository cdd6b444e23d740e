/**
 * Debian Linux under tsvmm on the emulated hardware-KVM host (emulated-host/host.ts:
 * QEMU TCG with -cpu max, Debian's kernel with the real kvm-amd). One L1 boot runs
 * test/emulated/linux-checks.ts, which boots the Linux guest of `tsvmm image linux`
 * twice (1 vCPU with --standby, 2 vCPUs) and reports one `@check` line per check;
 * each check below asserts its line. Skips with the reason where qemu is missing,
 * fails there where scripts/install-deps.sh ran (TSVMM_DEPS_INSTALLED=1).
 * The console of the whole run is kept in $TMPDIR/tsvmm-linux-emulated.log.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { buildL1Image, emulatedHostUnavailable, QEMU, QEMU_PACKAGE, RunResult, runInEmulatedHost } from '../emulated-host/host';
import { judgeKernelLog, TAINT_WARN } from '../emulated-host/kernel-log';
import { requireTool, skipBecause } from './helpers/tsvmm';

const LOG = path.join(os.tmpdir(), 'tsvmm-linux-emulated.log');
/**
 * `npm test` runs the short form (what fits the minutes it may add to CI on a 2-CPU machine): the
 * 2-vCPU VM with 2 kill rounds (one warm, one cold), then the 1-vCPU VM (standby takeovers, whose
 * TSC the guest's clocksource watchdog checks, and the guest's poweroff). `npm run test:linux`
 * (TSVMM_LINUX_FULL=1) runs 10 kill rounds, and the test guest's suites in a second L1 boot.
 */
const FULL = process.env.TSVMM_LINUX_FULL === '1';
const KILL_ROUNDS = FULL ? 10 : 2;
/**
 * The whole run's limit (TSVMM_LINUX_TEST_LIMIT_S overrides): past it qemu is killed and the suite
 * fails in one line instead of holding CI. About 4x what the run takes on a quiet 2-CPU machine
 * (docs/emulated-host.md has the measured times).
 */
const LIMIT_S = Number(process.env.TSVMM_LINUX_TEST_LIMIT_S) > 0 ? Number(process.env.TSVMM_LINUX_TEST_LIMIT_S) : (process.env.TSVMM_LINUX_FULL === '1' ? 40 : 20) * 60;

/** The emulator's warning as the Debian 6.1 guest prints it (dmesg, filtered the way the guest filters it). */
const XSAVE_BLOCK = [
  '[    0.000000] ------------[ cut here ]------------',
  '[    0.000000] XSAVE consistency problem: size 2696 != kernel_size 576',
  '[    0.000000] WARNING: CPU: 0 PID: 0 at arch/x86/kernel/fpu/xstate.c:606 fpu__init_system_xstate+0x4b5/0x6c8',
  '[    0.000000] Call Trace:',
  '[    0.000000] ---[ end trace 0000000000000000 ]---',
];

describe('the kernel log check (emulated-host/kernel-log.ts)', () => {
  it('exempts exactly the XSAVE consistency warning, and only on the emulated host', () => {
    assert.deepEqual(judgeKernelLog(XSAVE_BLOCK, TAINT_WARN, true), { problems: [], exempted: 1 });
    assert.equal(judgeKernelLog(XSAVE_BLOCK, TAINT_WARN, false).problems.length, XSAVE_BLOCK.length + 1, 'on hardware every line counts, and the taint');
    assert.deepEqual(judgeKernelLog(['[    1.0] clocksource: timekeeping watchdog: Marking clocksource tsc as unstable'], 0, true).exempted, 0);
    assert.equal(judgeKernelLog(['[    1.0] clocksource: timekeeping watchdog: Marking clocksource tsc as unstable'], 0, true).problems.length, 1);
  });
  it('fails any other warning, one next to the exempted one, or a taint it does not explain', () => {
    const other = ['[    5.1] ------------[ cut here ]------------', '[    5.1] WARNING: CPU: 1 PID: 7 at kernel/time/timer.c:1 foo+0x1/0x2', '[    5.1] Call Trace:', '[    5.1] ---[ end trace 0000000000000001 ]---'];
    assert.equal(judgeKernelLog([...XSAVE_BLOCK, ...other], TAINT_WARN, true).problems.length, 4);
    assert.equal(judgeKernelLog(['[    9.0] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [sh:80]'], 0, true).problems.length, 1);
    assert.equal(judgeKernelLog(['[    9.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:'], 0, true).problems.length, 1);
    assert.match(judgeKernelLog(XSAVE_BLOCK, TAINT_WARN | 1, true).problems[0], /kernel tainted: 513/);
    assert.match(judgeKernelLog([], TAINT_WARN, true).problems[0], /kernel tainted: 512 \(allowed here: 0\)/);
    // Our own command line and RCU's note of its stall timeout are not trouble; an unstable clocksource is.
    assert.deepEqual(judgeKernelLog(['[    0.0] Command line: console=ttyS0 watchdog_thresh=60 rcupdate.rcu_cpu_stall_timeout=300', '[    5.9] \tRCU CPU stall warnings timeout set to 300 (rcu_cpu_stall_timeout).'], 0, true).problems, []);
    assert.equal(judgeKernelLog(["[   67.4] clocksource: timekeeping watchdog on CPU0: Marking clocksource 'tsc' as unstable because the skew is too large:"], 0, true).problems.length, 1);
    // The message without its WARNING (or a WARNING elsewhere in xstate.c) is not the exempted block.
    assert.equal(judgeKernelLog([XSAVE_BLOCK[1]], 0, true).problems.length, 1);
  });
});

describe('Linux on the emulated hardware-KVM host', function () {
  this.timeout(0);
  const checks = new Map<string, { ok: boolean; details: Record<string, unknown> }>();
  let run: RunResult | undefined;
  let runError = '';

  before(async function () {
    requireTool(this, QEMU, QEMU_PACKAGE);
    const why = emulatedHostUnavailable();
    if (why) skipBecause(this, why);
    const image = buildL1Image({ log: (l) => process.stdout.write(`      emulated-host: ${l}\n`) });
    const again = buildL1Image();
    assert.equal(again.built, false, 'the L1 image is cached');
    assert.equal(again.hash, image.hash);
    const log = fs.openSync(LOG, 'w', 0o600);
    const t0 = Date.now();
    fs.writeSync(log, `# ${new Date().toISOString()} load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);
    try {
      // Each line carries the seconds since qemu started (this side's clock), so the log says where the time went.
      // The debug switches of tsvmm (TSVMM_*_DEBUG) reach the VMs inside the emulated host.
      const debug = Object.entries(process.env).filter(([k, v]) => /^TSVMM_[A-Z_]+_DEBUG$/.test(k) && /^[\w.-]*$/.test(v ?? '')).map(([k, v]) => `${k}=${v} `).join('');
      run = await runInEmulatedHost(`${debug}LINUX_CHECK_KILLS=${KILL_ROUNDS} node dist/test/emulated/linux-checks.js all`, {
        image, timeoutMs: LIMIT_S * 1000, onLine: (l) => { fs.writeSync(log, `${((Date.now() - t0) / 1000).toFixed(1).padStart(7)} ${l}\n`); if (process.env.TSVMM_EMULATED_VERBOSE) process.stdout.write(`      L1| ${l}\n`); },
      });
    } finally {
      fs.writeSync(log, `# ${new Date().toISOString()} load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);
      fs.closeSync(log);
    }
    runError = run.error ?? '';
    for (const m of run.output.matchAll(/@check (\S+) (ok|fail) (.*)/g)) checks.set(m[1], { ok: m[2] === 'ok', details: JSON.parse(m[3]) as Record<string, unknown> });
    process.stdout.write(`      emulated host: L1 booted in ${((run.bootMs ?? 0) / 1000).toFixed(0)} s, the checks took ${(run.wallMs / 1000).toFixed(0)} s in all (console: ${LOG})\n`);
    // A run that did not finish (the limit, an L1 panic) fails here, once, in one line.
    if (runError) throw new Error(`the emulated host run failed: ${runError}; checks reported: ${[...checks].map(([k, v]) => `${k} ${v.ok ? 'ok' : 'FAIL'}`).join(', ') || 'none'} (console: ${LOG})`);
  });

  const check = (name: string, what: string): void => {
    it(what, () => {
      for (const driver of ['vm-a', 'vm-b', 'driver']) {
        const d = checks.get(driver);
        if (d && !checks.has(name)) assert.fail(`${driver} stopped before "${name}": ${JSON.stringify(d.details)} (console: ${LOG})`);
      }
      const c = checks.get(name);
      assert.ok(c, `no result for "${name}" (console: ${LOG})`);
      assert.ok(c.ok, `${name}: ${JSON.stringify(c.details)} (console: ${LOG})`);
    });
  };
  check('boot-1cpu', 'boots with 1 vCPU (nproc, /proc/cpuinfo)');
  check('boot-2cpu', 'boots with 2 vCPUs (nproc, /proc/cpuinfo)');
  check('console-input', 'the serial console takes input: a command typed into it runs in the guest\'s shell');
  check('kvm-clock', 'kvm-clock is the clocksource');
  check('acpi', 'ACPI: the two LNRO0005 virtio-mmio devices, the MADT and DSDT, no ACPI errors');
  check('virtio-blk-ext4', 'virtio-blk: a verifying write/read loop on the ext4 disk');
  check('ping', 'virtio-net: the emulated host pings the guest through a TAP, 0% loss');
  check('udp', 'virtio-net: a UDP transfer (TFTP, verified by md5 in the guest) round-trips through the TAP');
  check('recovery', `the disk + UDP workload survives ${KILL_ROUNDS} vmm SIGKILLs, ${KILL_ROUNDS} driver-domain SIGKILLs (warm and cold) and a priv-domain SIGKILL with zero mismatches`);
  check('kernel-log-2cpu', 'no kernel warning, BUG, Oops, Call Trace, lockup, RCU stall or taint after the kills (2 vCPUs)');
  check('tsvmm-stop', '`tsvmm stop` ends the VM cleanly');
  check('standby-takeover', '--standby: the vmm and the driver-domain are taken over under the workload with zero mismatches');
  check('kernel-log-1cpu', 'no kernel warning, BUG, Oops, Call Trace, lockup, RCU stall, unstable TSC or taint after the takeovers (1 vCPU)');
  check('poweroff', 'a guest `poweroff -f` ends tsvmm with status 0');
});

/**
 * The test guest's suites that hardware KVM treats differently from PVM (boot through PVH, the vCPU
 * loop on 1 and 2 vCPUs, interrupt routes, vmm recovery), run once inside the emulated host with
 * mocha (`npm run test:linux` only: TCG makes each component start take seconds). The recovery
 * suite does 5 kills per case there instead of 50 (TSVMM_RECOVERY_KILLS).
 */
const HW_SUITES = ['boot-pvh', 'run', 'vmm-irq-routes', 'recovery-vmm'];
if (FULL) describe('the test guest\'s hardware-sensitive suites on the emulated host (npm run test:linux)', function () {
  this.timeout(0);
  it(`${HW_SUITES.join(', ')}: every test passes inside the emulated host, none skipped`, async function () {
    requireTool(this, QEMU, QEMU_PACKAGE);
    const why = emulatedHostUnavailable();
    if (why) skipBecause(this, why);
    const image = buildL1Image();
    const log = path.join(os.tmpdir(), 'tsvmm-emulated-suites.log');
    const fd = fs.openSync(log, 'w', 0o600);
    let r: RunResult;
    try {
      r = await runInEmulatedHost(`TSVMM_LOG_FORMAT=text TSVMM_RECOVERY_KILLS=5 node node_modules/mocha/bin/mocha.js --timeout 1200000 ${HW_SUITES.map((s) => `dist/test/${s}.test.js`).join(' ')}`, {
        image, timeoutMs: LIMIT_S * 1000, onLine: (l) => fs.writeSync(fd, `${l}\n`),
      });
    } finally { fs.closeSync(fd); }
    const passing = Number(/(\d+) passing/.exec(r.commandOutput)?.[1] ?? 0);
    const failing = Number(/(\d+) failing/.exec(r.commandOutput)?.[1] ?? 0);
    const pending = Number(/(\d+) pending/.exec(r.commandOutput)?.[1] ?? 0);
    process.stdout.write(`      emulated host: ${passing} passing, ${failing} failing, ${pending} pending in ${(r.wallMs / 1000).toFixed(0)} s (console: ${log})\n`);
    assert.equal(r.error, undefined, `the emulated host run failed: ${r.error} (console: ${log})`);
    assert.equal(r.status, 0, `mocha inside the emulated host: ${failing} failing (console: ${log})`);
    assert.ok(passing > 0 && pending === 0, `${passing} passing, ${pending} pending (console: ${log})`);
  });
});
