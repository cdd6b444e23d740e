/**
 * tsvmm snapshot / tsvmm run --restore (issue 17): a running VM saved to a directory resumes exactly
 * where it was, and a corrupt or foreign snapshot is refused in one line.
 */
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { blkLoopVm, guestErrors, RunningVm } from './helpers/fault-harness';
import { execFileSync, spawnSync } from 'child_process';
import { GUEST, requireKvm, requireTool, skipBecause, tsvmm } from './helpers/tsvmm';

const REPORT = 20_000_000;

/** Per vCPU, the counter values of its @counter lines, in order. */
function counters(out: string): Map<number, number[]> {
  const m = new Map<number, number[]>();
  for (const x of out.matchAll(/^@counter cpu=(\d+) n=(\d+) hash=\w+ .*ok$/gm)) {
    const cpu = Number(x[1]);
    if (!m.has(cpu)) m.set(cpu, []);
    m.get(cpu)!.push(Number(x[2]));
  }
  return m;
}

function snapshot(name: string, dir: string, stop: boolean) {
  return tsvmm(['snapshot', '--name', name, '--out', dir, ...(stop ? ['--stop'] : [])], { timeoutMs: 60_000 });
}

describe('tsvmm snapshot and run --restore', function () {
  this.timeout(120_000);
  before(requireKvm);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-snapshot-test-'));
  // The vmm, which writes a snapshot, runs as an unprivileged uid (contracts/confinement.ts).
  fs.chmodSync(tmp, 0o711);
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('counter on 2 vCPUs: the VM runs on after a snapshot; restored from one taken with --stop, every vCPU continues its count and hash chain', async () => {
    const name = `snapshot-ctr-${process.pid}`;
    const vm = new RunningVm(['--kernel', GUEST, '--name', name, '--cpus', '2', '--metrics-addr', 'none', '--cmdline', `workload=counter n=0 report=${REPORT}`]);
    let restored: RunningVm | undefined;
    try {
      await vm.waitFor(() => vm.count('@counter') >= 4 && vm.pid.vmm !== 0, 30_000, 'counter progress');
      const live = path.join(tmp, 'live');
      const r1 = snapshot(name, live, false);
      assert.strictEqual(r1.status, 0, r1.stderr);
      assert.match(r1.stdout, /snapshot in .* \(guest paused [\d.]+ ms, [\d.]+ MiB of RAM\); running/);
      const after = performance.now();
      await vm.waitFor(() => vm.count('@counter', after) >= 4, 30_000, 'counter progress after the snapshot');
      // A second snapshot into a directory that is not empty is refused in one line.
      const again = snapshot(name, live, false);
      assert.notStrictEqual(again.status, 0);
      assert.match(again.stderr, /^tsvmm: error: .*is not empty.*\n$/);

      const stopped = path.join(tmp, 'stopped');
      const r2 = snapshot(name, stopped, true);
      assert.strictEqual(r2.status, 0, r2.stderr);
      await vm.waitFor(() => vm.exit !== undefined, 30_000, 'the VM to stop after the snapshot');
      assert.strictEqual(vm.exit!.code, 0, vm.err);
      assert.match(vm.err, /stopped after a snapshot to/);
      const before = counters(vm.out);
      assert.deepStrictEqual(guestErrors(vm.out), []);

      restored = new RunningVm(['--restore', stopped, '--metrics-addr', 'none']);
      await restored.waitFor(() => (counters(restored!.out).get(0)?.length ?? 0) >= 2 && (counters(restored!.out).get(1)?.length ?? 0) >= 2, 30_000, 'counter progress on both vCPUs after the restore');
      assert.deepStrictEqual(guestErrors(restored.out), [], 'the guest checks its hash chain on every line (@error detail=mismatch)');
      assert.doesNotMatch(restored.out, /^@boot/m, 'resumed, not rebooted');
      // The serial byte stream goes on where it stopped: a line the guest was writing when it was
      // paused went out in part with the first run and ends in the restored one's output.
      const whole = counters(vm.out + restored.out);
      for (const cpu of [0, 1]) {
        const last = before.get(cpu)!.at(-1)!;
        const all = whole.get(cpu)!;
        const from = all.indexOf(last);
        assert.ok(from >= 0 && all.length - from >= 3, `vCPU ${cpu}: ${last} and two more lines`);
        for (let i = from + 1; i < all.length; i++) assert.strictEqual(all[i], all[i - 1] + REPORT, `vCPU ${cpu} continues from ${last}: ${all.slice(from, from + 4).join(', ')}`);
      }
    } finally {
      await vm.stop();
      await restored?.stop();
      vm.cleanup();
      restored?.cleanup();
    }
  });

  it('blk-loop verify=1: restored from a snapshot taken mid-I/O, the requests in flight are resubmitted and verification continues with zero errors', async () => {
    const name = `snapshot-blk-${process.pid}`;
    const vm = blkLoopVm(['--name', name, '--metrics-addr', 'none']);
    const dir = path.join(tmp, 'blk');
    let restored: RunningVm | undefined;
    try {
      await vm.waitFor(() => vm.count('@blk-progress') >= 5 && vm.pid.vmm !== 0, 30_000, 'blk progress');
      const r = snapshot(name, dir, true);
      assert.strictEqual(r.status, 0, `${r.stderr}\n${vm.err}`);
      await vm.waitFor(() => vm.exit !== undefined, 30_000, 'the VM to stop after the snapshot');
      const last = [...vm.out.matchAll(/^@blk-progress pass=(\d+) done=(\d+) errors=0/gm)].at(-1)!;
      restored = new RunningVm(['--restore', dir, '--metrics-addr', 'none']);
      await restored.waitFor(() => restored!.count('@blk-progress') >= 12, 60_000, 'blk progress after the restore (past a pass boundary)');
      assert.deepStrictEqual(guestErrors(restored.out), []);
      assert.doesNotMatch(restored.out, /^@boot/m, 'resumed, not rebooted');
      // (From the joined output: the line being written at the stop may have gone out in part.)
      const first = [...(vm.out + restored.out).matchAll(/^@blk-progress pass=(\d+) done=(\d+)/gm)].find((m) => m.index! > last.index!)!;
      // The next progress line is the same pass's next step, or the next pass's first.
      assert.ok((first[1] === last[1] && Number(first[2]) === Number(last[2]) + 100) || Number(first[1]) === Number(last[1]) + 1 || first[2] === last[2],
        `continues from pass ${last[1]} done ${last[2]}: pass ${first[1]} done ${first[2]}`);
    } finally {
      await vm.stop();
      await restored?.stop();
      vm.cleanup();
      restored?.cleanup();
      fs.rmSync((vm as { imgDir?: string }).imgDir!, { recursive: true, force: true });
    }
  });

  describe('net: a UDP echo continues after a restore onto a new TAP', function () {
    before(function () {
      if (process.getuid?.() !== 0) skipBecause(this, 'TAP devices and network namespaces need root');
      requireTool(this, 'ip', 'iproute2');
    });
    // The TAP is moved into a namespace made for the test: no traffic leaves this machine's sandbox.
    const ns = `tsvmm-snapnet-${process.pid}`;
    const tap = `tsvs${process.pid % 100000}`;
    const GUEST_IP = '10.0.2.15';
    after(() => { spawnSync('ip', ['netns', 'del', ns]); });
    const attach = () => {
      execFileSync('ip', ['link', 'set', tap, 'netns', ns]);
      execFileSync('ip', ['-n', ns, 'addr', 'add', '10.0.2.1/24', 'dev', tap]);
      execFileSync('ip', ['-n', ns, 'link', 'set', tap, 'up']);
    };
    const udp = (count: number) => {
      const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, path.join(__dirname, 'helpers', 'udp-client.js'), GUEST_IP, '7', String(count), '2'], { encoding: 'utf8', timeout: 60_000 });
      assert.strictEqual(r.status, 0, r.stderr);
      return JSON.parse(r.stdout) as { sent: number; received: number; lost: number; dup: number; corrupt: number };
    };
    /** The guest's last count of UDP datagrams echoed (@net-progress). */
    const udpCount = (out: string) => Number([...out.matchAll(/^@net-progress .*udp=(\d+)/gm)].at(-1)?.[1] ?? -1);

    it('echoes before the snapshot, and after `run --restore --net tap=...` re-attaches a TAP, intact, without a reboot', async () => {
      spawnSync('ip', ['netns', 'del', ns]);
      execFileSync('ip', ['netns', 'add', ns]);
      const name = `snapshot-net-${process.pid}`;
      const vm = new RunningVm(['--kernel', GUEST, '--name', name, '--metrics-addr', 'none', '--net', `tap=${tap}`, '--cmdline', `workload=net ip=${GUEST_IP} virtio_irq=1 net_report_s=1`]);
      const dir = path.join(tmp, 'net');
      let restored: RunningVm | undefined;
      try {
        await vm.waitFor(() => /^@net mac=/m.test(vm.out) && vm.pid.vmm !== 0, 30_000, 'the guest NIC');
        attach();
        const s1 = udp(100);
        assert.ok(s1.received >= 95 && s1.corrupt === 0, JSON.stringify(s1));
        await vm.waitFor(() => udpCount(vm.out) >= s1.received, 10_000, 'the guest to report the echoes');
        const r = snapshot(name, dir, true);
        assert.strictEqual(r.status, 0, `${r.stderr}\n${vm.err}`);
        await vm.waitFor(() => vm.exit !== undefined, 30_000, 'the VM to stop after the snapshot');
        const before = udpCount(vm.out);

        // The old TAP went with the VM; the restored one opens a new TAP of that name.
        restored = new RunningVm(['--restore', dir, '--name', `${name}-r`, '--metrics-addr', 'none', '--net', `tap=${tap}`]);
        await restored.waitFor(() => restored!.pid.vmm !== 0 && restored!.pid['driver-domain'] !== 0 && /VM ".*" is up/.test(restored!.err), 30_000, 'the restored VM');
        attach();
        const s2 = udp(100);
        assert.ok(s2.received >= 95 && s2.corrupt === 0 && s2.dup === 0, JSON.stringify(s2));
        await restored.waitFor(() => udpCount(restored!.out) >= before + s2.received, 10_000, 'the restored guest to count the echoes on from where it was');
        assert.doesNotMatch(restored.out, /^@boot/m, 'resumed, not rebooted');
        assert.deepStrictEqual(guestErrors(restored.out), []);
      } finally {
        await vm.stop();
        await restored?.stop();
        vm.cleanup();
        restored?.cleanup();
      }
    });
  });

  describe('a corrupt or foreign snapshot is refused in one line', () => {
    let good = '';
    before(async function () {
      const name = `snapshot-bad-${process.pid}`;
      const vm = new RunningVm(['--kernel', GUEST, '--name', name, '--metrics-addr', 'none', '--cmdline', `workload=counter n=0 report=${REPORT}`]);
      try {
        await vm.waitFor(() => vm.count('@counter') >= 1 && vm.pid.vmm !== 0, 30_000, 'counter progress');
        good = path.join(tmp, 'good');
        const r = snapshot(name, good, true);
        assert.strictEqual(r.status, 0, `${r.stderr}\n${vm.err}`);
        await vm.waitFor(() => vm.exit !== undefined, 30_000, 'the VM to stop');
      } finally {
        await vm.stop();
        vm.cleanup();
      }
    });

    const variants: [string, (dir: string) => void, RegExp][] = [
      ['a flipped byte in guest RAM', (d) => { const f = path.join(d, 'ram'); const fd = fs.openSync(f, 'r+'); const b = Buffer.alloc(1); fs.readSync(fd, b, 0, 1, 100); b[0] ^= 0xff; fs.writeSync(fd, b, 0, 1, 100); fs.closeSync(fd); }, /ram fails its CRC/],
      ['a flipped byte in the vCPU state', (d) => { const f = path.join(d, 'vm.state'); const fd = fs.openSync(f, 'r+'); const b = Buffer.alloc(1); fs.readSync(fd, b, 0, 1, 9000); b[0] ^= 0x01; fs.writeSync(fd, b, 0, 1, 9000); fs.closeSync(fd); }, /vm.state fails its CRC/],
      ['a newer format version', (d) => editManifest(d, (m) => { m.version = 99; }), /format version 99; this tsvmm reads version 1/],
      ['another keeper layout version', (d) => editManifest(d, (m) => { m.snapLayoutVersion = 7; }), /layout version 7; this tsvmm reads version/],
      ['the wrong vCPU count', (d) => editManifest(d, (m) => { (m.config as { cpus: number }).cpus = 2; }), /vm.state is listed as \d+ bytes; a 2-vCPU snapshot's is/],
      ['a truncated RAM file', (d) => fs.truncateSync(path.join(d, 'ram'), 4096), /ram is 4096 bytes, its manifest says/],
      ['no manifest', (d) => fs.rmSync(path.join(d, 'manifest.json')), /has no manifest.json: not a tsvmm snapshot/],
      ['a manifest that is not JSON', (d) => fs.writeFileSync(path.join(d, 'manifest.json'), '{'), /manifest.json is malformed/],
    ];
    for (const [what, spoil, message] of variants) {
      it(what, () => {
        const dir = path.join(tmp, `bad-${what.replace(/\W+/g, '-')}`);
        fs.cpSync(good, dir, { recursive: true });
        spoil(dir);
        const r = tsvmm(['run', '--restore', dir, '--name', `snapshot-refused-${process.pid}`, '--metrics-addr', 'none'], { timeoutMs: 30_000 });
        assert.strictEqual(r.status, 1, r.stderr);
        assert.match(r.stderr, message);
        assert.strictEqual(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
        assert.doesNotMatch(r.stdout, /@counter/, 'the guest did not run');
      });
    }
  });
});

function editManifest(dir: string, edit: (m: Record<string, unknown>) => void): void {
  const f = path.join(dir, 'manifest.json');
  const m = JSON.parse(fs.readFileSync(f, 'utf8')) as Record<string, unknown>;
  edit(m);
  fs.writeFileSync(f, JSON.stringify(m));
}
