/**
 * The control-plane verbs against a running guest: ls, ps, pause/resume, kill, console,
 * metrics, events, labels, stop; and their bad input: unknown VM names, malformed requests,
 * a foreign user, the socket's mode.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as http from 'http';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { BIN, GUEST, requireKvm, skipBecause, tsvmm } from './helpers/tsvmm';
import { sleep, startVm, TestVm } from './helpers/control-plane';
import { COMPONENT_V8_FLAGS, SpawnedComponent } from '../contracts/v8-flags';
import { PRIV_DOMAIN_NICE } from '../priv-domain/lower-priority';

/** The driver-domain's write counter from `tsvmm metrics`. */
function writes(vm: TestVm): number {
  const r = vm.cli(['metrics', '--name', vm.name]);
  assert.equal(r.status, 0, r.stderr);
  const m = /tsvmm_virtio_requests_total\{device="blk0",type="blk",operation="write"[^}]*\} (\d+)/.exec(r.stdout);
  assert.ok(m, r.stdout);
  return Number(m[1]);
}

describe('tsvmm control-plane verbs', function () {
  this.timeout(120_000);
  before(requireKvm);
  let vm: TestVm;

  before(async () => {
    vm = await startVm();
    const t0 = Date.now();
    while (vm.progress() < 2 && Date.now() - t0 < 20_000) await sleep(50);
  });
  after(async () => {
    await vm?.stop();
    if (vm) fs.rmSync(vm.dir, { recursive: true, force: true });
  });

  it('ls lists the VM; ps shows every component with pid, state, uptime and restarts', () => {
    const ls = vm.cli(['ls']);
    assert.equal(ls.status, 0, ls.stderr);
    assert.match(ls.stdout, new RegExp(`^${vm.name}\\s+running`, 'm'));
    // One VM running: --name may be left out.
    const ps = vm.cli(['ps', '--json']);
    assert.equal(ps.status, 0, ps.stderr);
    const comps = JSON.parse(ps.stdout) as { name: string; pid: number; state: string; uptimeSeconds: number; restarts: number }[];
    const names = comps.map((c) => c.name);
    for (const n of ['supervisor', 'vmm', 'driver-domain', 'priv-domain']) assert.ok(names.includes(n), `${n} missing from ${names}`);
    for (const c of comps) {
      assert.ok(c.pid > 0, `${c.name} pid`);
      assert.equal(c.state, 'running');
      assert.ok(c.uptimeSeconds >= 0 && c.uptimeSeconds < 120, `${c.name} uptime ${c.uptimeSeconds}`);
      assert.equal(c.restarts, 0);
    }
    const table = vm.cli(['ps', '--name', vm.name]);
    assert.match(table.stdout, /^COMPONENT\s+PID\s+STATE\s+UPTIME\s+RESTARTS\s+UID\s+CAPS\s+SECCOMP\s+LAST RECOVERY/);
  });

  it('each component runs with its own V8 flags (contracts/v8-flags.ts), the priv-domain and the guardian with some', () => {
    assert.ok(COMPONENT_V8_FLAGS['priv-domain'].length > 0);
    assert.ok(COMPONENT_V8_FLAGS.guardian.length > 0);
    const comps = JSON.parse(vm.cli(['ps', '--json']).stdout) as { name: string; pid: number }[];
    const argvOf = (pid: number) => fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    const pids: [SpawnedComponent, number][] = (['vmm', 'driver-domain', 'priv-domain'] as SpawnedComponent[]).map((name) => [name, comps.find((c) => c.name === name)!.pid]);
    // The guardian: the supervisor's child that runs guardian-main.js.
    const sup = comps.find((c) => c.name === 'supervisor')!.pid;
    const children = fs.readdirSync(`/proc/${sup}/task`).flatMap((t) => fs.readFileSync(`/proc/${sup}/task/${t}/children`, 'utf8').split(' ').filter(Boolean).map(Number));
    const guardian = children.find((pid) => { try { return argvOf(pid).some((a) => a.endsWith('guardian-main.js')); } catch { return false; } });
    assert.ok(guardian, `no guardian among the supervisor's children ${children}`);
    pids.push(['guardian', guardian]);
    for (const [name, pid] of pids) {
      const argv = argvOf(pid);
      const script = argv.findIndex((a) => a.endsWith('.js'));
      assert.deepEqual(argv.slice(1, script), COMPONENT_V8_FLAGS[name], `${name}: ${argv.join(' ')}`);
    }
  });

  it('the priv-domain runs below the guest\'s path in CPU priority, every thread of it; the vmm and the driver-domain do not (priv-domain/lower-priority.ts)', () => {
    const comps = JSON.parse(vm.cli(['ps', '--json']).stdout) as { name: string; pid: number }[];
    /** Each thread's nice value (/proc/PID/task/TID/stat, field 19). */
    const niceOf = (pid: number) => fs.readdirSync(`/proc/${pid}/task`).map((t) => {
      const st = fs.readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      return Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[16]);
    });
    const pidOf = (name: string) => comps.find((c) => c.name === name)!.pid;
    const priv = niceOf(pidOf('priv-domain'));
    assert.ok(priv.length > 1, `threads ${priv}`);
    assert.deepEqual([...new Set(priv)], [PRIV_DOMAIN_NICE], `priv-domain threads' nice values ${priv}`);
    for (const name of ['vmm', 'driver-domain', 'supervisor']) {
      assert.deepEqual([...new Set(niceOf(pidOf(name)))], [0], name);
    }
  });

  it('a VM that ends before its priv-domain is ready still has its start and its exit in the store', () => {
    // A guest done in a few milliseconds: its priv-domain (started once the guest runs, at nice 10)
    // is still starting when the VM ends, and the supervisor waits for it to record the exit.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-short-'));
    fs.chmodSync(dir, 0o711);
    const env = { TSVMM_RUNTIME_DIR: path.join(dir, 'run'), TSVMM_STATE_DIR: path.join(dir, 'state') };
    try {
      const name = `short-${process.pid}`;
      const r = tsvmm(['run', '--name', name, '--metrics-addr', 'none', '--kernel', GUEST, '--cmdline', 'workload=counter n=1000 report=500'], { env });
      assert.equal(r.status, 0, r.stderr);
      assert.doesNotMatch(r.stderr, /not in its store|did not record/, r.stderr);
      const ev = tsvmm(['events', '--name', name, '--json'], { env });
      assert.equal(ev.status, 0, ev.stderr);
      const kinds = (JSON.parse(ev.stdout) as { kind: string }[]).map((e) => e.kind);
      assert.ok(kinds.includes('started') && kinds.includes('exited'), `events ${ev.stdout}`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the API socket is mode 0600 in a 0700 directory', () => {
    assert.equal(fs.statSync(vm.socket).mode & 0o777, 0o600);
    assert.equal(fs.statSync(path.dirname(vm.socket)).mode & 0o777, 0o700);
  });

  it('pause stops the guest, resume restarts it', async () => {
    const p = vm.cli(['pause', '--name', vm.name]);
    assert.equal(p.status, 0, p.stderr);
    assert.match(p.stdout, /paused/);
    const a = writes(vm);
    await sleep(500);
    assert.equal(writes(vm), a, 'the guest did I/O while paused');
    const ps = JSON.parse(vm.cli(['ps', '--json']).stdout) as { name: string; state: string }[];
    assert.equal(ps.find((c) => c.name === 'vmm')!.state, 'paused');
    const r = vm.cli(['resume', '--name', vm.name]);
    assert.equal(r.status, 0, r.stderr);
    const t0 = Date.now();
    while (writes(vm) === a && Date.now() - t0 < 10_000) await sleep(100);
    assert.ok(writes(vm) > a, 'no I/O after resume');
  });

  it('kill restarts the component; ps shows the restart and the recovery', async () => {
    const before = JSON.parse(vm.cli(['ps', '--json']).stdout) as { name: string; pid: number }[];
    const old = before.find((c) => c.name === 'driver-domain')!.pid;
    const k = vm.cli(['kill', 'driver-domain', '--signal', 'SIGKILL']);
    assert.equal(k.status, 0, k.stderr);
    assert.match(k.stdout, new RegExp(`pid ${old}`));
    let dd: { pid: number; restarts: number; lastRecovery: { cause: string; seconds: number } | null } | undefined;
    const t0 = Date.now();
    while (Date.now() - t0 < 10_000) {
      dd = (JSON.parse(vm.cli(['ps', '--json']).stdout) as { name: string; pid: number; restarts: number; lastRecovery: null }[]).find((c) => c.name === 'driver-domain');
      if (dd && dd.restarts === 1 && dd.pid !== old) break;
      await sleep(100);
    }
    assert.equal(dd?.restarts, 1);
    assert.notEqual(dd?.pid, old);
    assert.match(dd!.lastRecovery!.cause, /SIGKILL/);
    assert.ok(dd!.lastRecovery!.seconds > 0);
  });

  it('console shows the history, and follows', async () => {
    const hist = vm.cli(['console', '--no-follow']);
    assert.equal(hist.status, 0, hist.stderr);
    assert.match(hist.stdout, /@blk-progress/);
    // Follow: new lines arrive after the history.
    const child = require('child_process').spawn(process.execPath, [BIN, 'console', '--name', vm.name], { env: { ...process.env, ...vm.env } });
    let got = '';
    child.stdout.on('data', (d: Buffer) => { got += d; });
    const n0 = (vm.out().match(/@blk-progress/g) ?? []).length;
    const t0 = Date.now();
    while ((got.match(/@blk-progress/g) ?? []).length <= hist.stdout.split('@blk-progress').length + 1 && Date.now() - t0 < 15_000) await sleep(100);
    child.kill();
    assert.ok((vm.out().match(/@blk-progress/g) ?? []).length > n0, 'guest made no progress');
    assert.ok((got.match(/@blk-progress/g) ?? []).length > hist.stdout.split('@blk-progress').length - 1, 'console did not follow');
    // The console log file has it too.
    const log = fs.readFileSync(path.join(vm.env.TSVMM_STATE_DIR!, 'vms', vm.name, 'console.log'), 'utf8');
    assert.match(log, /@blk-progress/);
  });

  it('metrics: the API and the TCP endpoint serve the same families', async () => {
    const text = vm.cli(['metrics']).stdout;
    for (const fam of ['tsvmm_vcpu_exits_total', 'tsvmm_virtio_requests_total', 'tsvmm_virtio_bytes_total', 'tsvmm_virtio_requests_in_flight',
      'tsvmm_component_up', 'tsvmm_component_restarts_total', 'tsvmm_component_recovery_duration_seconds', 'tsvmm_component_heartbeat_age_seconds',
      'tsvmm_guest_memory_bytes']) assert.match(text, new RegExp(`^# TYPE ${fam} `, 'm'), fam);
    assert.match(text, /tsvmm_component_restarts_total\{component="driver-domain"[^}]*\} 1/);
    const info = JSON.parse((await vm.api('GET', '/v1/vm')).body) as { metricsAddr: string };
    const [host, port] = [info.metricsAddr.slice(0, info.metricsAddr.lastIndexOf(':')), Number(info.metricsAddr.slice(info.metricsAddr.lastIndexOf(':') + 1))];
    assert.ok(port > 0);
    const body = await new Promise<string>((resolve, reject) => {
      http.get({ host, port, path: '/metrics' }, (res) => { let b = ''; res.on('data', (d) => { b += d; }); res.on('end', () => resolve(b)); }).on('error', reject);
    });
    assert.match(body, /^# TYPE tsvmm_vcpu_exits_total counter/m);
  });

  it('labels and annotations are stored; events record the lifecycle', async () => {
    const l = vm.cli(['label', 'owner', 'alice']);
    assert.equal(l.status, 0, l.stderr);
    assert.equal(vm.cli(['label', 'owner']).stdout.trim(), 'owner=alice');
    assert.equal(vm.cli(['annotate', 'hello']).status, 0);
    const evs = JSON.parse(vm.cli(['events', '--json']).stdout) as { kind: string }[];
    const kinds = evs.map((e) => e.kind);
    for (const k of ['started', 'paused', 'resumed', 'kill', 'label-set']) assert.ok(kinds.includes(k), `${k} missing from ${kinds}`);
  });

  it('bad input gets one clear line', async () => {
    const cases: [string[], RegExp][] = [
      [['ps', '--name', 'no-such-vm'], /^tsvmm: error: no VM named "no-such-vm" is running \(running: /],
      [['ps', '--name', '../etc'], /^tsvmm: error: invalid VM name "\.\.\/etc"/],
      [['kill', 'hypervisor'], /^tsvmm: error: unknown component "hypervisor"/],
      [['kill', 'supervisor'], /^tsvmm: error: the supervisor is not killed through its own API/],
      [['kill', 'vmm', '--signal', 'SIGNOPE'], /^tsvmm: error: unknown signal "SIGNOPE"/],
      [['kill'], /^tsvmm: error: usage: tsvmm kill COMPONENT/],
      [['ps', '--bogus'], /^tsvmm: error: Unknown option '--bogus'/],
      [['label', 'bad key!', 'v'], /^tsvmm: error: invalid label key "bad key!"/],
    ];
    for (const [args, re] of cases) {
      const r = vm.cli(args);
      assert.notEqual(r.status, 0, args.join(' '));
      assert.match(r.stderr, re, args.join(' '));
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    }
    // The raw API.
    const bad: [string, string, string | undefined, Record<string, string>, number, RegExp][] = [
      ['POST', '/v1/vm/annotations', '{"text": ', {}, 400, /malformed JSON body/],
      ['POST', '/v1/vm/annotations', '[1]', {}, 400, /must be an object/],
      ['POST', '/v1/vm/annotations', '{"text": 5}', {}, 400, /"text" must be a string/],
      ['POST', '/v1/vm/annotations', '{"txt": "x"}', {}, 400, /unknown field "txt"/],
      ['GET', '/v1/nothing', undefined, {}, 404, /no such endpoint: GET \/v1\/nothing/],
      ['DELETE', '/v1/vm', undefined, {}, 405, /DELETE is not allowed on \/v1\/vm/],
      ['POST', '/v1/vm/pause', '{"force": true}', {}, 400, /unknown field "force"/],
      ['GET', '/v1/vm/events?since=-1', undefined, {}, 400, /since must be/],
      ['POST', '/v1/vm/annotations', '{"text": "a"}', { 'Idempotency-Key': 'has space' }, 400, /Idempotency-Key must be/],
    ];
    for (const [method, p, body, headers, status, re] of bad) {
      const r = await rawRequest(vm.socket, method, p, body, headers);
      assert.equal(r.status, status, `${method} ${p}: ${r.body}`);
      assert.match((JSON.parse(r.body) as { error: string }).error, re);
    }
    // The same key for a different request.
    const k1 = await rawRequest(vm.socket, 'POST', '/v1/vm/annotations', '{"text": "a"}', { 'Idempotency-Key': 'k-conflict' });
    assert.equal(k1.status, 201);
    const k2 = await rawRequest(vm.socket, 'POST', '/v1/vm/annotations', '{"text": "b"}', { 'Idempotency-Key': 'k-conflict' });
    assert.equal(k2.status, 422);
    // Not HTTP at all.
    const garbage = await new Promise<string>((resolve) => {
      const s = require('net').connect(vm.socket, () => s.write('HELLO\r\n\r\n'));
      let b = '';
      s.on('data', (d: Buffer) => { b += d; });
      s.on('close', () => resolve(b));
      s.on('error', () => resolve(b));
    });
    assert.match(garbage, /^HTTP\/1\.1 400/);
  });

  it('a foreign user is refused with a clear error', function () {
    if (spawnSync('runuser', ['--help']).error) skipBecause(this, 'runuser is not installed (util-linux; scripts/install-deps.sh): the foreign user is simulated with it');
    // Let nobody reach the directories (not the socket): connect() then needs the socket's mode.
    fs.chmodSync(vm.dir, 0o755);
    const run = path.dirname(path.dirname(vm.socket));
    fs.chmodSync(run, 0o755);
    fs.chmodSync(path.dirname(vm.socket), 0o755);
    try {
      const r = spawnSync('runuser', ['-u', 'nobody', '--', process.execPath, BIN, 'ps', '--name', vm.name], {
        encoding: 'utf8', env: { ...process.env, ...vm.env },
      });
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, /permission denied on its API socket \(it belongs to uid 0\)/);
    } finally {
      fs.chmodSync(path.dirname(vm.socket), 0o700);
      fs.chmodSync(run, 0o700);
    }
    const r2 = spawnSync('runuser', ['-u', 'nobody', '--', process.execPath, BIN, 'ps', '--name', vm.name], { encoding: 'utf8', env: { ...process.env, ...vm.env } });
    assert.match(r2.stderr, /permission denied/);
  });

  it('run refuses a name that is taken or invalid', () => {
    const taken = tsvmm(['run', '--name', vm.name], { env: vm.env });
    assert.equal(taken.status, 2);
    assert.match(taken.stderr, new RegExp(`a VM named "${vm.name}" is already running`));
    const bad = tsvmm(['run', '--name', 'a/b'], { env: vm.env });
    assert.match(bad.stderr, /invalid VM name "a\/b"/);
    const addr = tsvmm(['run', '--metrics-addr', 'nope'], { env: vm.env });
    assert.match(addr.stderr, /invalid --metrics-addr "nope"/);
  });

  it('stop ends the VM (a requested stop: tsvmm run exits 0, no "error:"); its record stays in the store', async () => {
    const s = vm.cli(['stop']);
    assert.equal(s.status, 0, s.stderr);
    assert.equal(await vm.exited, 0, vm.err());
    assert.doesNotMatch(vm.err(), /error:/);
    // The test guest takes the power button (test/graceful-stop.test.ts has the other ways).
    assert.match(vm.err(), /tsvmm: stopped through the API \(tsvmm stop\): the guest powered off \d+ ms after the power button\n/);
    const ls = vm.cli(['ls', '--all', '--json']);
    const rows = JSON.parse(ls.stdout) as { name: string; state: string }[];
    assert.deepEqual(rows.find((r) => r.name === vm.name)?.state, 'stopped');
    const r = vm.cli(['ps', '--name', vm.name]);
    assert.match(r.stderr, /no VM named .* is running/);
    assert.ok(!fs.existsSync(path.dirname(vm.socket)), 'runtime dir left behind');
  });
});

function rawRequest(socket: string, method: string, p: string, body: string | undefined, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, method, path: p, headers: body !== undefined ? { 'Content-Type': 'application/json', ...headers } : headers }, (res) => {
      let b = '';
      res.on('data', (d) => { b += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}
