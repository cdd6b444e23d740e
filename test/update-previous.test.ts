/**
 * tsvmm update across builds (issue 17): a VM started from a build of the previous commit (HEAD~1,
 * built in a cache directory, test/helpers/previous-build.ts) is updated to this build, installed
 * over it while it runs, under blk-loop verify=1 on vCPU 0 and counter hash chains on vCPU 1; then a
 * newer build whose platform page layout version differs cannot take over and is refused in one
 * line, with the VM untouched. Where this commit itself changed a layout version, the update from
 * the previous build is that refusal.
 */
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { blkLoopVm, guestErrors, RunningVm } from './helpers/fault-harness';
import { install, installOver, layoutVersions, noPreviousCommit, previousBuild } from './helpers/previous-build';
import { requireKvm, ROOT, skipBecause } from './helpers/tsvmm';

const REPORT = 20_000_000;

/** vCPU 1's counter values, in order (the guest checks each hash-chain step itself: @error on a mismatch). */
function counts(out: string): number[] {
  return [...out.matchAll(/^@counter cpu=1 n=(\d+) hash=\w+ .*ok$/gm)].map((m) => Number(m[1]));
}

/** The addon files a process has mapped (their paths as /proc shows them now). */
function addonMapped(pid: number): string[] {
  return [...new Set(fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.endsWith('tsvmm_kvm.node')).map((l) => l.slice(l.indexOf('/'))))];
}

describe('tsvmm update from the previous commit', function () {
  // Building HEAD~1 the first time (tsc, and node-gyp if native/ changed) takes a minute or two here.
  this.timeout(600_000);
  before(requireKvm);
  let prev: { dir: string; commit: string };
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-update-previous-'));
  // The components run confined, as uid 65534: the installation must be readable by it, as any is.
  fs.chmodSync(tmp, 0o755);
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));
  before(function () {
    const why = noPreviousCommit();
    if (why) skipBecause(this, why);
    // eslint-disable-next-line no-console
    prev = previousBuild((l) => console.log(`      ${l}`));
  });

  it('HEAD~1 -> this build under blk-loop verify=1 and a counter hash chain: zero errors, no reboot, no recovery; a build that cannot read the layout is refused in one line, the VM untouched', async () => {
    const inst = path.join(tmp, 'install');
    install(prev.dir, inst);
    const bin = path.join(inst, 'bin', 'tsvmm.js');
    const cli = (args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 150_000 });
    const name = `update-prev-${process.pid}`;
    const vm: RunningVm = blkLoopVm(['--name', name, '--cpus', '2', '--metrics-addr', 'none'], {}, { bin, cmdline: `ap_counter=1 n=0 report=${REPORT}` });
    try {
      await vm.waitFor(() => vm.count('@blk-progress') >= 3 && counts(vm.out).length >= 2 && vm.pid.vmm !== 0 && vm.pid['driver-domain'] !== 0, 60_000, 'blk progress and vCPU 1 counting');
      const old = { vmm: vm.pid.vmm, dd: vm.pid['driver-domain'] };
      const liveAddon = path.join(inst, 'build', 'Release', 'tsvmm_kvm.node');
      assert.deepStrictEqual(addonMapped(old.vmm), [liveAddon], 'the vmm runs the installed (previous) build');

      // This build, installed over the previous one while the VM runs.
      installOver(ROOT, inst);
      assert.deepStrictEqual(addonMapped(old.vmm).map((f) => !f.startsWith(path.join(inst, 'build') + '/')), [true], 'the old vmm keeps its (renamed) addon');
      const was = layoutVersions(prev.dir);
      const now = layoutVersions(ROOT);
      const changed = Object.keys(now).filter((k) => was[k] !== now[k]);
      if (changed.length) {
        // This commit changed a layout the previous build's processes share: this build cannot take
        // over from them (it reads only its own versions), and says so in one line.
        const refused = cli(['update', 'all', '--name', name]);
        assert.strictEqual(refused.status, 1, `${changed.join(', ')} changed (${changed.map((k) => `${was[k]} -> ${now[k]}`).join(', ')}), yet: ${refused.stdout}${refused.stderr}`);
        assert.match(refused.stderr, /^tsvmm: error: .*update refused, the VM runs on unchanged: the new (vmm|driver-domain) cannot take over: .*version.*\n$/);
        assert.strictEqual(refused.stderr.split('\n').length, 2, `one line: ${refused.stderr}`);
        const t = performance.now();
        await vm.waitFor(() => vm.count('@blk-progress', t) >= 3 && vm.count('@counter', t) >= 2, 60_000, 'the guest running on after the refusal');
        assert.deepStrictEqual({ vmm: vm.pid.vmm, dd: vm.pid['driver-domain'] }, old, 'the running components were left alone');
        assert.deepStrictEqual(guestErrors(vm.out), []);
        // eslint-disable-next-line no-console
        console.log(`      this commit changed the ${changed.join(', ')} version: the update from HEAD~1 was refused in one line, as it must be`);
        return;
      }
      const r = cli(['update', 'all', '--name', name]);
      assert.strictEqual(r.status, 0, `${r.stderr}\n${vm.err}`);
      assert.match(r.stdout, /vmm replaced \(guest paused [\d.]+ ms\); driver-domain replaced \(handover [\d.]+ ms\); priv-domain restarting/);
      await vm.waitFor(() => vm.pid.vmm !== old.vmm && vm.pid['driver-domain'] !== old.dd, 20_000, 'a new vmm and driver-domain');
      for (const pid of [vm.pid.vmm, vm.pid['driver-domain']]) assert.deepStrictEqual(addonMapped(pid), [liveAddon], `pid ${pid} runs this build`);
      assert.match(vm.err, /updated vmm: the new build took over in [\d.]+ ms \(keeper save [\d.]+ ms; the old vmm exited cleanly\)/);
      // The supervisor stays the previous build's (tsvmm update replaces vmm, driver-domain and
      // priv-domain): how it words the driver-domain's handover is that build's (before this commit's
      // parent it said `recovered driver-domain (cause: signal SIGTERM)`), so only the vmm's is checked.
      let t = performance.now();
      await vm.waitFor(() => vm.count('@blk-progress', t) >= 3 && vm.count('@counter', t) >= 2, 60_000, 'blk progress and counting on the new build');

      // A newer build that reads another platform page layout: its standby cannot take over.
      const vmm1 = vm.pid.vmm;
      installOver(ROOT, inst, (dist) => {
        // Every copy of the constant: the tsc output and the component bundles.
        let n = 0;
        for (const f of ['contracts/platform-page.js', 'vmm/main.bundle.js', 'driver-domain/main.bundle.js']) {
          const file = path.join(dist, f);
          const s = fs.readFileSync(file, 'utf8');
          const edited = s.replace(/(PLATFORM_VERSION\w* = )1;/g, (_m, p: string) => { n++; return `${p}2;`; });
          fs.writeFileSync(file, edited);
        }
        assert.ok(n >= 2, `PLATFORM_VERSION found ${n} times in the build: has it moved?`);
      });
      const refused = cli(['update', 'vmm', '--name', name]);
      assert.strictEqual(refused.status, 1, `${refused.stdout}${refused.stderr}`);
      assert.match(refused.stderr, /^tsvmm: error: .*update refused, the VM runs on unchanged: the new vmm cannot take over: .*the platform page has layout version 1; this build reads version 2.*\n$/);
      assert.strictEqual(refused.stderr.split('\n').length, 2, `one line: ${refused.stderr}`);
      t = performance.now();
      await vm.waitFor(() => vm.count('@blk-progress', t) >= 3 && vm.count('@counter', t) >= 2, 60_000, 'the guest running on after the refusal');
      assert.strictEqual(vm.pid.vmm, vmm1, 'the running vmm was left alone');
      assert.deepStrictEqual(addonMapped(vmm1).length, 1);

      assert.deepStrictEqual(guestErrors(vm.out), []);
      assert.strictEqual(vm.out.match(/^@boot/gm)?.length, 1, 'the guest booted once');
      const c = counts(vm.out);
      for (let i = 1; i < c.length; i++) assert.strictEqual(c[i], c[i - 1] + REPORT, `vCPU 1's count continues across the updates: ${c.slice(Math.max(0, i - 2), i + 2).join(', ')}`);
      assert.doesNotMatch(vm.err, /recovered vmm/, 'updates and the refusal are not recoveries');
      assert.deepStrictEqual(vm.recoveries.filter((x) => x.component === 'vmm' || x.cause !== 'signal SIGTERM'), []);
    } finally {
      await vm.stop();
      vm.cleanup();
      fs.rmSync((vm as { imgDir?: string }).imgDir!, { recursive: true, force: true });
    }
  });
});
