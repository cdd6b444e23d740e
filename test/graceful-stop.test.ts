/**
 * tsvmm stop is graceful (issue 14): it presses the ACPI power button of tsvmm's Generic Event
 * Device (vmm/ged.ts, vmm/acpi/dsdt.ts), the test guest's handler (guest/power.c) powers off as a
 * finished workload does, and the VM ends as a requested stop; a guest that ignores the button is
 * stopped hard after the timeout; --force stops hard at once. Every way, `tsvmm run` exits 0 without
 * "error:", and `tsvmm stop` returns once the VM has ended, saying how.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import { guestLines, requireKvm, tsvmm, tsvmmAsync } from './helpers/tsvmm';
import { components, sleep, startVm, TestVm } from './helpers/control-plane';

/** A guest that runs until stopped (the counter workload, practically endless). */
const LONG = 'workload=counter n=100000000000 report=1000000000';

/** Starts a VM and waits for its guest to boot (it routes the GED's interrupt right after @boot). */
async function booted(name: string, cmdline: string): Promise<TestVm> {
  const vm = await startVm({ name: `graceful-stop-${name}-${process.pid}`, disk: false, cmdline });
  const t0 = Date.now();
  while (!guestLines(vm.out()).some((l) => l.word === 'boot') && Date.now() - t0 < 30_000) await sleep(50);
  assert.ok(guestLines(vm.out()).some((l) => l.word === 'boot'), `the guest did not boot:\n${vm.err()}`);
  return vm;
}

/**
 * A verb against `vm`, without blocking this process (the VMs booting beside it must have their
 * output read meanwhile, or they stall writing it).
 */
function cli(vm: TestVm, args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const p = tsvmmAsync(args, vm.env);
  p.stdin.end();
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d) => { stdout += d; });
  p.stderr.on('data', (d) => { stderr += d; });
  return new Promise((resolve) => p.on('close', (status) => resolve({ status, stdout, stderr })));
}

async function events(vm: TestVm): Promise<{ kind: string; detail: Record<string, unknown> }[]> {
  const r = await cli(vm, ['events', '--name', vm.name, '--json']);
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as { kind: string; detail: Record<string, unknown> }[];
}

describe('graceful stop: the ACPI power button', function () {
  this.timeout(120_000);
  before(requireKvm);
  const vms: TestVm[] = [];
  afterEach(async () => {
    for (const vm of vms.splice(0)) {
      await vm.stop();
      fs.rmSync(vm.dir, { recursive: true, force: true });
    }
  });

  /** Boots a VM and runs `body` on it; a failure shows tsvmm's stderr and the guest's last lines. */
  async function withVm(name: string, cmdline: string, body: (vm: TestVm) => Promise<void>): Promise<void> {
    const vm = await booted(name, cmdline);
    vms.push(vm);
    try {
      await body(vm);
    } catch (e) {
      if (e instanceof Error) e.message += `\n--- tsvmm stderr ---\n${vm.err()}\n--- guest (last lines) ---\n${vm.out().slice(-1500)}`;
      throw e;
    }
  }

  it('tsvmm stop: the guest powers off itself after the power button; tsvmm run exits 0, no "error:"', () => withVm('button', LONG, async (vm) => {
    const s = await cli(vm, ['stop', '--name', vm.name]);
    assert.equal(s.status, 0, s.stderr);
    // tsvmm stop returns once the VM has ended, and says how.
    assert.match(s.stdout, /^VM \S+: stopped through the API \(tsvmm stop\): the guest powered off \d+ ms after the power button\n$/);
    assert.equal(await vm.exited, 0, vm.err());
    // The guest's own power-off, through its GED handler (guest/power.c): the event it read, then port 0xf4.
    const button = guestLines(vm.out()).filter((l) => l.word === 'power-button');
    assert.deepEqual(button.map((l) => l.fields), [{ events: '0x1', action: 'poweroff' }], vm.out());
    assert.doesNotMatch(vm.err(), /error:/);
    assert.match(vm.err(), /tsvmm: stop requested: pressed the power button; the guest has 5 s to power off/);
    assert.match(vm.err(), /tsvmm: stopped through the API \(tsvmm stop\): the guest powered off \d+ ms after the power button\n/);
    const ev = await events(vm);
    assert.deepEqual(ev.find((e) => e.kind === 'stop-requested')?.detail, { force: false });
    assert.match(String(ev.find((e) => e.kind === 'exited')?.detail.reason), /the guest powered off \d+ ms after the power button/);
    assert.equal(ev.find((e) => e.kind === 'exited')?.detail.code, 0);
  }));

  it('tsvmm stop --force: a hard stop at once, no power button', () => withVm('force', LONG, async (vm) => {
    const s = await cli(vm, ['stop', '--force', '--name', vm.name]);
    assert.equal(s.status, 0, s.stderr);
    assert.match(s.stdout, /^VM \S+: stopped through the API \(tsvmm stop --force\)\n$/);
    assert.equal(await vm.exited, 0, vm.err());
    assert.ok(!guestLines(vm.out()).some((l) => l.word === 'power-button'), 'the guest saw no power button');
    assert.doesNotMatch(vm.err(), /error:|pressed the power button/);
    assert.deepEqual((await events(vm)).find((e) => e.kind === 'stop-requested')?.detail, { force: true });
  }));

  it('a guest that ignores the power button (POST /v1/vm/power-button changes nothing) is stopped hard after the timeout', () => withVm('ignore', `${LONG} power_button=ignore`, async (vm) => {
    // The button alone (the API's power-button): pressed, recorded; this guest does not handle it.
    const r = await vm.api('POST', '/v1/vm/power-button', {});
    assert.equal(r.status, 200, r.body);
    assert.equal((JSON.parse(r.body) as { state: string }).state, 'running');
    const s = await cli(vm, ['stop', '--timeout', '1', '--name', vm.name]);
    assert.equal(s.status, 0, s.stderr);
    assert.match(s.stdout, /^VM \S+: stopped through the API \(tsvmm stop\): the guest did not power off within 1 s of the power button; stopped it hard\n$/);
    assert.equal(await vm.exited, 0, vm.err());
    assert.ok(!guestLines(vm.out()).some((l) => l.word === 'power-button'), 'this guest does not handle the button');
    assert.doesNotMatch(vm.err(), /error:/);
    const ev = await events(vm);
    assert.ok(ev.some((e) => e.kind === 'power-button'), 'the press is recorded');
    assert.deepEqual(ev.find((e) => e.kind === 'stop-requested')?.detail, { force: false, timeoutSeconds: 1 });
  }));

  it('a press survives the vmm: pressed while the vmm is stopped, then the vmm killed, the restored vmm raises it', () => withVm('recovery', LONG, async (vm) => {
    const vmm = (await components(vm)).vmm.pid;
    // A stopped vmm polls nothing: the press stays in the platform page, and the guest is frozen.
    process.kill(vmm, 'SIGSTOP');
    const r = await vm.api('POST', '/v1/vm/power-button', {});
    assert.equal(r.status, 200, r.body);
    assert.ok(!guestLines(vm.out()).some((l) => l.word === 'power-button'), 'nothing can have taken it yet');
    process.kill(vmm, 'SIGKILL');
    assert.equal(await vm.exited, 0, vm.err());
    assert.match(vm.err(), /recovered vmm/);
    assert.ok(guestLines(vm.out()).some((l) => l.word === 'power-button'), vm.out());
    assert.match(vm.err(), /tsvmm: guest powered off with status 0\n/);
  }));

  it('a bad --timeout is a usage error in one line', () => {
    const bad = tsvmm(['stop', '--timeout', 'soon', '--name', 'nobody-here']);
    assert.equal(bad.status, 2);
    assert.equal(bad.stderr, 'tsvmm: error: invalid --timeout "soon": expected seconds, 0 to 3600 (e.g. 10 or 0.5)\n');
  });
});
