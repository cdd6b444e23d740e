/**
 * The console, as an operator uses it: `tsvmm console` types into the guest's UART (the test
 * guest's console workload echoes each line), stays attached across priv-domain and vmm
 * recoveries, detaches on Ctrl-]; one writer at a time, any number of readers; piped output is
 * complete; console.log is marked at each run's start and rotated at its cap. And `tsvmm run`
 * tells the operator where the VM is and how to stop it.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { spawn, ChildProcessWithoutNullStreams } from 'child_process';
import { BIN, requireKvm } from './helpers/tsvmm';
import { sleep, startVm, TestVm } from './helpers/control-plane';

let detail: (() => string) | undefined;
async function until(what: string, cond: () => boolean, ms = 30_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}${detail ? `\n${detail()}` : ''}`);
    await sleep(50);
  }
}

function consoleProc(vm: TestVm, args: string[] = []) {
  const p = spawn(process.execPath, [BIN, 'console', '--name', vm.name, ...args], { env: { ...process.env, ...vm.env }, stdio: ['pipe', 'pipe', 'pipe'] }) as ChildProcessWithoutNullStreams;
  let out = '';
  let err = '';
  p.stdout.on('data', (d) => { out += d; });
  p.stderr.on('data', (d) => { err += d; });
  const exited = new Promise<number | null>((r) => p.on('exit', (c) => r(c)));
  return { p, out: () => out, err: () => err, exited };
}

describe('tsvmm console', function () {
  this.timeout(180_000);
  before(requireKvm);
  let vm: TestVm;
  before(async () => {
    // A small console.log cap, so the 60 kB the guest prints rotates it.
    process.env.TSVMM_CONSOLE_LOG_MAX = String(30_000);
    try {
      vm = await startVm({ name: `operator-console-${process.pid}`, disk: false, cmdline: 'workload=console spam=60000', extra: ['--mem', '64M'] });
    } finally {
      delete process.env.TSVMM_CONSOLE_LOG_MAX;
    }
    await until('@console-ready', () => vm.out().includes('@console-ready'), 60_000);
  });

  it('output that ends no line (the guest\'s prompt) reaches `tsvmm run` and the console without waiting for a newline', async () => {
    // The guest prints "console> " and then only polls the UART for input, exits the native loop
    // answers (before, the prompt sat in the vmm's line buffer until a newline).
    await until('the prompt on tsvmm run\'s output', () => /@console-ready\r?\nconsole> $/.test(vm.out()), 20_000);
    const r = consoleProc(vm, ['--read-only', '--no-follow']);
    await r.exited;
    assert.match(r.out(), /console> $/);
  });
  after(async () => {
    await vm?.stop();
    if (vm) fs.rmSync(vm.dir, { recursive: true, force: true });
  });

  it('run prints the API socket, the metrics URL and how to stop', () => {
    assert.match(vm.err(), new RegExp(`API socket\\s+${vm.socket.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    assert.match(vm.err(), /metrics\s+http:\/\/127\.0\.0\.1:\d+\/metrics/);
    assert.match(vm.err(), new RegExp(`stop\\s+tsvmm stop --name ${vm.name}`));
  });

  it('piped, --no-follow writes every byte before it exits', async () => {
    const m = /^tsvmm_console_bytes_total\{[^}]*\} (\d+)/m.exec(vm.cli(['metrics']).stdout);
    assert.ok(m);
    const total = Number(m[1]);
    assert.ok(total > 60_000, `only ${total} console bytes`);
    // A reader that is slow to start (stdout is a socket, as from a Node parent or a pipeline
    // stage that is busy): tsvmm must wait for it to take every byte instead of exiting.
    const c = spawn(process.execPath, [BIN, 'console', '--no-follow', '--name', vm.name], { env: { ...process.env, ...vm.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let n = 0;
    // A 'readable' listener that reads nothing holds the bytes back for a second (a paused stream
    // alone does not: Node resumes it, into the void, when the child exits). 'end' comes only
    // once every byte was read.
    const hold = () => undefined;
    c.stdout.on('readable', hold);
    const exited = new Promise<number | null>((r) => c.on('exit', (x) => r(x)));
    const ended = new Promise<void>((r) => c.stdout.on('end', () => r()));
    setTimeout(() => { c.stdout.off('readable', hold); c.stdout.on('data', (d: Buffer) => { n += d.length; }); c.stdout.resume(); }, 1000);
    await ended;
    assert.equal(await exited, 0);
    assert.equal(n, total);
  });

  it('console.log starts with a marker for the run and is rotated at its cap', async () => {
    const log = path.join(vm.env.TSVMM_STATE_DIR!, 'vms', vm.name, 'console.log');
    await until('console.log to be rotated', () => fs.existsSync(`${log}.1`) && fs.readFileSync(log, 'utf8').includes('@console-ready'));
    const files = [3, 2, 1].map((i) => `${log}.${i}`).filter((f) => fs.existsSync(f)).concat(log);
    const first = fs.readFileSync(files[0], 'utf8');
    assert.match(first, new RegExp(`^\\[tsvmm: run \\S+ of VM ${vm.name} started \\d{4}-`));
    for (const f of files) assert.ok(fs.statSync(f).size <= 30_000, `${f} is over the cap`);
    // Nothing lost across the rotations: every @spam line is in one of the files, in order.
    const lines = files.map((f) => fs.readFileSync(f, 'utf8')).join('').split('\n').filter((l) => l.startsWith('@spam'));
    const last = Number(/i=(\d+)/.exec(lines[lines.length - 1])![1]);
    assert.equal(lines.length, last + 1);
  });

  it('typing reaches the guest; it stays attached across priv-domain and vmm recoveries; Ctrl-] detaches', async () => {
    const c = consoleProc(vm);
    const reader = consoleProc(vm, ['--read-only']);
    detail = () => `console stdout tail: ${c.out().slice(-300)}\nconsole stderr: ${c.err()}\nVM stderr tail: ${vm.err().slice(-600)}`;
    c.p.stdin.write('hello there\r');
    await until('the echo of the first line', () => c.out().includes('@echo line=hello there'));
    // Another writer is refused while this one is active; readers see everything.
    const other = consoleProc(vm);
    other.p.stdin.write('intruder\r');
    await until('the second writer refused', () => /another console session is typing/.test(other.err()));
    other.p.stdin.write('\x1d');
    await until('the second writer to detach', () => other.p.exitCode !== null);
    assert.equal(other.p.exitCode, 0, other.err());
    // Recoveries underneath the attached console.
    assert.equal(vm.cli(['kill', 'priv-domain']).status, 0);
    c.p.stdin.write('after priv\r');
    await until('the echo after a priv-domain recovery', () => c.out().includes('@echo line=after priv'));
    assert.equal(vm.cli(['kill', 'vmm']).status, 0);
    c.p.stdin.write('after vmm\r');
    await until('the echo after a vmm recovery', () => c.out().includes('@echo line=after vmm'));
    await until('the reader to see it too', () => reader.out().includes('@echo line=after vmm'));
    assert.ok(!c.out().includes('intruder') && !vm.out().includes('@echo line=intruder'), 'the refused writer got through');
    // Detach: Ctrl-] ends the console, not the VM.
    c.p.stdin.write('\x1d');
    await until('the console to detach', () => c.p.exitCode !== null);
    assert.equal(c.p.exitCode, 0, c.err());
    reader.p.kill();
    await reader.exited;
    assert.equal(vm.proc.exitCode, null, 'the VM stopped');
    // The guest acts on input: "poweroff" powers it off with status 0.
    const last = consoleProc(vm);
    last.p.stdin.write('poweroff\r');
    assert.equal(await vm.exited, 0, vm.err());
    await last.exited;
  });
});

describe('tsvmm events records recoveries, and reads a stopped VM', function () {
  this.timeout(120_000);
  before(requireKvm);
  it('a kill and a recovery are events; after the VM stops, tsvmm events --name still lists them', async () => {
    const vm = await startVm({ name: `operator-events-${process.pid}`, disk: false, cmdline: 'workload=console', extra: ['--mem', '64M'] });
    try {
      await until('@console-ready', () => vm.out().includes('@console-ready'), 60_000);
      assert.equal(vm.cli(['kill', 'vmm']).status, 0);
      const recovery = () => (JSON.parse(vm.cli(['events', '--json']).stdout || '[]') as { kind: string; detail: { component?: string; cause?: string } }[])
        .find((e) => e.kind === 'recovery' && e.detail.component === 'vmm');
      await until('the vmm recovery event', () => recovery() !== undefined);
      assert.match(recovery()!.detail.cause ?? '', /signal SIGKILL/);
      const m = vm.cli(['metrics']).stdout;
      assert.match(m, /^tsvmm_build_info\{version="[^"]+",commit="[^"]*",node="v\d[^"]*"[^}]*\} 1$/m);
      assert.equal(vm.cli(['stop']).status, 0);
      await vm.exited;
      const r = vm.cli(['events', '--name', vm.name, '--json']);
      assert.equal(r.status, 0, r.stderr);
      const kinds = (JSON.parse(r.stdout) as { kind: string }[]).map((e) => e.kind);
      for (const k of ['started', 'kill', 'recovery', 'stop-requested', 'exited']) assert.ok(kinds.includes(k), `${k} missing from ${kinds}`);
    } finally {
      await vm.stop();
      fs.rmSync(vm.dir, { recursive: true, force: true });
    }
  });
});
