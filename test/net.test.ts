/**
 * virtio-net end to end through a real TAP: the host's own `ping` reaches
 * the guest, UDP datagrams come back intact, and killing the driver-domain
 * under UDP load corrupts nothing (losses are counted and reported).
 * The TAP is moved into a network namespace made for the test, so no
 * traffic leaves this machine's sandbox.
 */
import { strict as assert } from 'assert';
import { execFileSync, spawn, spawnSync } from 'child_process';
import * as path from 'path';
import { GUEST, guestLines, requireKvm, requireTool, skipBecause, tsvmmAsync } from './helpers/tsvmm';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const GUEST_IP = '10.0.2.15';
const HOST_IP = '10.0.2.1';

describe('virtio-net through a TAP', function () {
  this.timeout(180_000);
  before(requireKvm);
  before(function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'TAP devices and network namespaces need root');
    requireTool(this, 'ip', 'iproute2');
    requireTool(this, 'ping', 'iputils-ping');
  });

  // Each test gets a fresh VM.
  const ns = `tsvmm-test-${process.pid}`;
  const tap = `tsvt${process.pid % 100000}`;
  let vm: ReturnType<typeof tsvmmAsync>;
  let out = '';
  let err = '';

  beforeEach(async () => {
    out = '';
    err = '';
    spawnSync('ip', ['netns', 'del', ns]);
    execFileSync('ip', ['netns', 'add', ns]);
    vm = tsvmmAsync(['run', '--kernel', GUEST, '--net', `tap=${tap}`, '--cmdline', `workload=net ip=${GUEST_IP} virtio_irq=1 net_report_s=1`]);
    vm.stdout.on('data', (d) => { out += d; });
    vm.stderr.on('data', (d) => { err += d; });
    const t0 = Date.now();
    while (!/@net mac=/.test(out) && Date.now() - t0 < 20_000) await sleep(50);
    assert.match(out, /@net mac=/, `guest NIC did not come up:\n${out}\n${err}`);
    execFileSync('ip', ['link', 'set', tap, 'netns', ns]);
    execFileSync('ip', ['-n', ns, 'addr', 'add', `${HOST_IP}/24`, 'dev', tap]);
    execFileSync('ip', ['-n', ns, 'link', 'set', tap, 'up']);
    execFileSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  });

  afterEach(async () => {
    if (vm.exitCode === null && vm.signalCode === null) {
      const exited = new Promise((r) => vm.once('exit', r));
      vm.kill('SIGTERM');
      await exited;
    }
    spawnSync('ip', ['netns', 'del', ns]);
  });

  const udp = (count: number, intervalMs: number) => {
    const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, path.join(__dirname, 'helpers', 'udp-client.js'), GUEST_IP, '7', String(count), String(intervalMs)], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as { sent: number; received: number; lost: number; dup: number; corrupt: number };
  };

  it("the host's ping gets answers from the guest", () => {
    const r = spawnSync('ip', ['netns', 'exec', ns, 'ping', '-c', '3', '-W', '2', GUEST_IP], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, r.stdout + r.stderr + out);
    assert.match(r.stdout, /3 received/);
  });

  it('echoes numbered UDP datagrams intact', () => {
    const s = udp(500, 1);
    assert.equal(s.corrupt, 0);
    assert.equal(s.dup, 0);
    assert.ok(s.received >= 495, JSON.stringify(s));
  });

  it('keeps echoing with no corrupted reply while the driver-domain is killed repeatedly', async () => {
    const kills = 10;
    // The client runs in its own process for ~8 s; the driver-domain is killed under it.
    const client = spawn('ip', ['netns', 'exec', ns, process.execPath, path.join(__dirname, 'helpers', 'udp-client.js'), GUEST_IP, '7', '4000', '2']);
    let cout = '';
    client.stdout.on('data', (d) => { cout += d; });
    const done = new Promise<number | null>((r) => client.on('exit', r));
    for (let k = 0; k < kills; k++) {
      await sleep(300 + Math.random() * 300);
      const before = err.match(/recovered driver-domain/g)?.length ?? 0;
      const m = [...err.matchAll(/driver-domain ready \(pid (\d+)\)/g)];
      try { process.kill(Number(m[m.length - 1][1]), 'SIGKILL'); } catch (e) { throw new Error(`kill ${k}: ${(e as Error).message}\n${err}`); }
      const t0 = Date.now();
      while ((err.match(/recovered driver-domain/g)?.length ?? 0) <= before && Date.now() - t0 < 10_000) await sleep(10);
    }
    assert.equal(await done, 0);
    const s = JSON.parse(cout) as { sent: number; received: number; lost: number; dup: number; corrupt: number };
    console.log(`      UDP across ${kills} driver-domain kills: ${JSON.stringify(s)}`);
    assert.equal(s.corrupt, 0);
    assert.ok(s.received > s.sent * 0.5, JSON.stringify(s));
    assert.equal(err.match(/recovered driver-domain/g)?.length, kills);
    assert.ok(!guestLines(out).some((l) => l.word === 'error'), out);
  });
});
