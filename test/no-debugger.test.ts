/**
 * No debugger backdoor: Node opens its inspector (code execution for anyone who can reach
 * 127.0.0.1:9229) on SIGUSR1. Every tsvmm process ignores it, and the API refuses to send a
 * component a signal it has no use for.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import { requireKvm } from './helpers/tsvmm';
import { sleep, startVm, TestVm } from './helpers/control-plane';

/** Socket inodes in LISTEN state (TCP and TCP6), from /proc/net. */
function listeningInodes(): Set<string> {
  const inodes = new Set<string>();
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try { text = fs.readFileSync(f, 'latin1'); } catch { continue; }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols[3] === '0A') inodes.add(cols[9]);
    }
  }
  return inodes;
}

/** The TCP listening sockets a process holds, as "inode" strings. */
function listenersOf(pid: number): string[] {
  const listening = listeningInodes();
  const found: string[] = [];
  let fds: string[] = [];
  try { fds = fs.readdirSync(`/proc/${pid}/fd`); } catch { return found; }
  for (const fd of fds) {
    let target = '';
    try { target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { continue; }
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m && listening.has(m[1])) found.push(m[1]);
  }
  return found.sort();
}

describe('no debugger backdoor', function () {
  this.timeout(120_000);
  before(requireKvm);
  let vm: TestVm;

  before(async () => {
    vm = await startVm({ disk: false, cmdline: 'workload=counter n=100000000000 report=1000000000' });
    const t0 = Date.now();
    while (!/priv-domain ready/.test(vm.err()) && Date.now() - t0 < 30_000) await sleep(50);
  });
  after(async () => {
    await vm?.stop();
    if (vm) fs.rmSync(vm.dir, { recursive: true, force: true });
  });

  function pids(): Record<string, number> {
    const r = vm.cli(['ps', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const comps = JSON.parse(r.stdout) as { name: string; pid: number }[];
    const out: Record<string, number> = {};
    for (const c of comps) if (c.pid > 0) out[c.name] = c.pid;
    for (const n of ['supervisor', 'vmm', 'priv-domain']) assert.ok(out[n], `${n} missing from ps: ${r.stdout}`);
    return out;
  }

  it('SIGUSR1 opens no listening socket in any tsvmm process', async () => {
    const before = pids();
    const held = Object.fromEntries(Object.entries(before).map(([n, pid]) => [n, listenersOf(pid)]));
    for (const pid of Object.values(before)) process.kill(pid, 'SIGUSR1');
    await sleep(1500); // the inspector, where it starts, listens within milliseconds
    const after = pids();
    assert.deepEqual(after, before, 'a component died or was replaced after SIGUSR1');
    for (const [n, pid] of Object.entries(after)) assert.deepEqual(listenersOf(pid), held[n], `${n} (pid ${pid}) listens on a new socket after SIGUSR1`);
    assert.match(vm.err(), /ignored SIGUSR1/);
  });

  it('the API refuses signals a component has no use for', async () => {
    for (const [component, signal] of [['vmm', 'SIGUSR1'], ['driver-domain', 'USR1'], ['priv-domain', '10'], ['keeper', 'SIGSEGV'], ['vmm', 'SIGUSR2']]) {
      const r = await vm.api('POST', `/v1/vm/components/${component}/kill`, { signal });
      assert.equal(r.status, 400, `${component} ${signal}: ${r.status} ${r.body}`);
      assert.match(JSON.parse(r.body).error, /cannot be sent to the|unknown signal/);
    }
    const bad = await vm.api('POST', '/v1/vm/components/vmm/kill', { signal: 'SIGNOPE' });
    assert.equal(bad.status, 400);
    const cli = vm.cli(['kill', 'vmm', '--signal', 'SIGUSR1', '--name', vm.name]);
    assert.notEqual(cli.status, 0);
    assert.match(cli.stderr, /^tsvmm: error: SIGUSR1 cannot be sent to the vmm/);
  });

  it('components start without NODE_OPTIONS (an --inspect there would open a debugger)', () => {
    for (const [n, pid] of Object.entries(pids())) {
      if (n === 'supervisor') continue;
      const env = fs.readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0');
      assert.ok(!env.some((e) => e.startsWith('NODE_OPTIONS=')), `${n} has NODE_OPTIONS`);
    }
  });
});
