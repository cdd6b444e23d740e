/**
 * Prometheus metrics: promtool accepts them, and the endpoint keeps serving sane numbers while
 * components (the priv-domain that serves them included) are killed and recovered.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as http from 'http';
import * as net from 'net';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { haveTool, requireKvm, requireTool } from './helpers/tsvmm';
import { metricValue, sleep, startVm, TestVm, runScenario } from './helpers/control-plane';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = (s.address() as net.AddressInfo).port; s.close(() => resolve(p)); });
    s.on('error', reject);
  });
}

function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/metrics', timeout: 2000 }, (res) => {
      let b = '';
      res.on('data', (d) => { b += d; });
      res.on('end', () => (res.statusCode === 200 ? resolve(b) : reject(new Error(`HTTP ${res.statusCode}`))));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
  });
}

function check(text: string): { status: number | null; out: string } {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  return { status: r.status, out: r.error ? `promtool: ${r.error.message}` : (r.stdout + r.stderr).trim() };
}

describe('Prometheus metrics', function () {
  this.timeout(180_000);
  before(requireKvm);
  let vm: TestVm | undefined;
  afterEach(async () => {
    await vm?.stop();
    if (vm) fs.rmSync(vm.dir, { recursive: true, force: true });
    vm = undefined;
  });

  it('promtool check metrics accepts the output', async function () {
    requireTool(this, 'promtool', 'prometheus');
    vm = await startVm();
    const t0 = Date.now();
    while (vm.progress() < 2 && Date.now() - t0 < 20_000) await sleep(50);
    // A recovery, so the histogram has samples too.
    const ps = JSON.parse(vm.cli(['ps', '--json']).stdout) as { name: string; pid: number }[];
    process.kill(ps.find((c) => c.name === 'driver-domain')!.pid, 'SIGKILL');
    while (!/recovered driver-domain/.test(vm.err()) && Date.now() - t0 < 30_000) await sleep(50);
    await sleep(200);
    const r = vm.cli(['metrics']);
    assert.equal(r.status, 0, r.stderr);
    const c = check(r.stdout);
    assert.equal(c.status, 0, `promtool: ${c.out}\n${r.stdout}`);
    assert.equal(c.out, '', c.out);
    assert.ok(metricValue(r.stdout, 'tsvmm_vcpu_exits_total') > 0);
    assert.ok(metricValue(r.stdout, 'tsvmm_virtio_requests_total', { operation: 'write' }) > 0);
    assert.ok(metricValue(r.stdout, 'tsvmm_virtio_bytes_total', { operation: 'write' }) >= 4096 * metricValue(r.stdout, 'tsvmm_virtio_requests_total', { operation: 'write' }) - 1);
    assert.equal(metricValue(r.stdout, 'tsvmm_component_recovery_duration_seconds_count', { component: 'driver-domain' }), 1);
    assert.equal(metricValue(r.stdout, 'tsvmm_guest_memory_bytes'), 256 * 2 ** 20);
  });

  it('the endpoint serves monotonic counters while the driver-domain and the priv-domain are killed', async () => {
    await runScenario(async () => {
      if (vm) { await vm.stop(); fs.rmSync(vm.dir, { recursive: true, force: true }); vm = undefined; }
      try {
        await scrapeDuringRecoveries();
      } catch (e) {
        await sleep(300);
        (e as { vm?: TestVm }).vm = vm;
        throw e;
      }
      return vm;
    });
  });

  async function scrapeDuringRecoveries(): Promise<void> {
    const port = await freePort();
    vm = await startVm({ extra: ['--metrics-addr', `127.0.0.1:${port}`] });
    const t0 = Date.now();
    while (vm.progress() < 2 && Date.now() - t0 < 20_000) await sleep(50);
    const texts: string[] = [];
    let failures = 0;
    let running = true;
    const scraper = (async () => {
      while (running) {
        try { texts.push(await scrape(port)); } catch { failures++; }
        await sleep(30);
      }
    })();
    const KILLS = 5;
    const pidOf = (name: string) => {
      const r = vm!.cli(['ps', '--json', '--name', vm!.name]);
      assert.equal(r.status, 0, `${r.stderr}\n${vm!.err().slice(-3000)}`);
      return (JSON.parse(r.stdout) as { name: string; pid: number }[]).find((c) => c.name === name)!.pid;
    };
    try {
    for (let k = 0; k < KILLS; k++) {
      for (const comp of ['driver-domain', 'priv-domain']) {
        const pid = pidOf(comp);
        process.kill(pid, 'SIGKILL');
        // Wait for the recovery to complete (the replacement is ready) before the next kill.
        const re = new RegExp(`recovered ${comp}`, 'g');
        const t1 = Date.now();
        while ((vm.err().match(re)?.length ?? 0) < k + 1 && Date.now() - t1 < 15_000) await sleep(20);
        assert.equal(vm.err().match(re)?.length ?? 0, k + 1, `${comp} not recovered after kill ${k + 1}:\n${vm.err().slice(-2000)}`);
        await sleep(100 + Math.random() * 200);
      }
    }
    await sleep(1500); // the priv-domain's status catches up
    } finally {
      running = false;
      await scraper;
    }
    assert.ok(texts.length > 20, `only ${texts.length} scrapes succeeded (${failures} failed)`);
    // Counters that live in shared memory never go backwards, across every restart.
    let prev = { exits: 0, writes: 0, bytes: 0 };
    for (const t of texts) {
      const cur = {
        exits: metricValue(t, 'tsvmm_vcpu_exits_total'),
        writes: metricValue(t, 'tsvmm_virtio_requests_total', { operation: 'write' }),
        bytes: metricValue(t, 'tsvmm_virtio_bytes_total', { operation: 'write' }),
      };
      assert.ok(cur.exits >= prev.exits && cur.writes >= prev.writes && cur.bytes >= prev.bytes, `counter went backwards: ${JSON.stringify(prev)} -> ${JSON.stringify(cur)}`);
      prev = cur;
    }
    const last = texts[texts.length - 1];
    assert.equal(metricValue(last, 'tsvmm_component_restarts_total', { component: 'driver-domain' }), KILLS);
    assert.equal(metricValue(last, 'tsvmm_component_restarts_total', { component: 'priv-domain' }), KILLS);
    assert.equal(metricValue(last, 'tsvmm_component_recovery_duration_seconds_count', { component: 'driver-domain' }), KILLS);
    assert.equal(metricValue(last, 'tsvmm_component_recovery_duration_seconds_count', { component: 'priv-domain' }), KILLS);
    assert.equal(metricValue(last, 'tsvmm_component_up', { component: 'driver-domain' }), 1);
    assert.ok(metricValue(last, 'tsvmm_component_heartbeat_age_seconds', { component: 'driver-domain' }) < 1);
    // promtool is optional outside CI; where scripts/install-deps.sh ran, check() fails if it is missing.
    if (haveTool('promtool') || process.env.TSVMM_DEPS_INSTALLED === '1') {
      const c = check(last);
      assert.equal(c.status, 0, c.out);
    }
    // The guest never noticed.
    assert.ok(!/@(blk-)?error/.test(vm.out()), vm.out().split('\n').filter((l) => /@(blk-)?error/.test(l)).slice(0, 3).join('\n'));
    const lastProgress = vm.out().split('\n').filter((l) => l.startsWith('@blk-progress')).pop()!;
    assert.match(lastProgress, /errors=0/);
    fs.writeFileSync(path.join(vm.dir, 'last.prom'), last);
  }
});
