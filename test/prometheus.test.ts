/**
 * Metrics for a fleet, with a real Prometheus server (Debian's prometheus package): two VMs on
 * the host, each on its own free port, found through the file_sd target each one writes, scraped
 * across a vmm recovery; and the alerting rules in deploy/prometheus/ pass `promtool check rules`.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as http from 'http';
import * as net from 'net';
import * as path from 'path';
import { spawn, spawnSync, ChildProcess } from 'child_process';
import { requireKvm, requireTool, ROOT } from './helpers/tsvmm';
import { sleep, startVm, TestVm } from './helpers/control-plane';

function get(port: number, p: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: p }, (res) => { let b = ''; res.on('data', (d) => { b += d; }); res.on('end', () => resolve(b)); }).on('error', reject);
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as net.AddressInfo).port; s.close(() => resolve(p)); });
  });
}

describe('Prometheus scrapes a fleet through file_sd', function () {
  this.timeout(240_000);

  it('the rules file passes promtool check rules', function () {
    requireTool(this, 'promtool', 'prometheus');
    const r = spawnSync('promtool', ['check', 'rules', path.join(ROOT, 'deploy', 'prometheus', 'tsvmm.rules.yml')], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /SUCCESS: 6 rules found/);
  });

  describe('two VMs and a Prometheus server', function () {
    before(requireKvm);
    let vms: TestVm[] = [];
    let prom: ChildProcess | undefined;
    let dir = '';
    before(function () { requireTool(this, 'prometheus', 'prometheus'); });
    after(async () => {
      prom?.kill('SIGKILL');
      for (const vm of vms) await vm.stop();
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    it('finds both on their own ports and keeps scraping across a vmm recovery', async () => {
      dir = fs.mkdtempSync(path.join(require('os').tmpdir(), 'tsvmm-prom-'));
      for (const n of ['a', 'b']) vms.push(await startVm({ name: `operator-prom-${n}-${process.pid}`, dir, disk: false, cmdline: 'workload=counter n=100000000000 report=500000000', extra: ['--mem', '64M'] }));
      const targets = vms.map((vm) => path.join(dir, 'run', 'prometheus', `${vm.name}.json`));
      for (const t of targets) assert.ok(fs.existsSync(t), `${t} missing`);
      const addrs = targets.map((t) => (JSON.parse(fs.readFileSync(t, 'utf8')) as { targets: string[] }[])[0].targets[0]);
      assert.notEqual(addrs[0], addrs[1], 'the two VMs share a metrics port');
      const cfg = path.join(dir, 'prometheus.yml');
      fs.writeFileSync(cfg, [
        'global: { scrape_interval: 1s, evaluation_interval: 1s }',
        `rule_files: ['${path.join(ROOT, 'deploy', 'prometheus', 'tsvmm.rules.yml')}']`,
        'scrape_configs:',
        '  - job_name: tsvmm',
        `    file_sd_configs: [{ files: ['${path.join(dir, 'run', 'prometheus')}/*.json'] }]`,
        '',
      ].join('\n'));
      const port = await freePort();
      prom = spawn('prometheus', [`--config.file=${cfg}`, `--storage.tsdb.path=${path.join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: 'ignore' });
      const query = async (q: string) => (JSON.parse(await get(port, `/api/v1/query?query=${encodeURIComponent(q)}`)) as { data: { result: { metric: Record<string, string>; value: [number, string] }[] } }).data.result;
      const until = async (what: string, cond: () => Promise<boolean>) => {
        const t0 = Date.now();
        for (;;) {
          try { if (await cond()) return; } catch { /* not up yet */ }
          if (Date.now() - t0 > 90_000) throw new Error(`timed out waiting for ${what}`);
          await sleep(500);
        }
      };
      await until('both VMs scraped', async () => (await query('up{job="tsvmm"} == 1')).length === 2);
      const names = (await query('tsvmm_build_info')).map((r) => r.metric.vm).sort();
      assert.deepEqual(names, vms.map((v) => v.name).sort());
      // A vmm recovery in one VM: its series go on (same target), the restart is counted.
      assert.equal(vms[0].cli(['kill', 'vmm', '--name', vms[0].name]).status, 0);
      await until('the restart to be scraped', async () =>
        (await query(`tsvmm_component_restarts_total{vm="${vms[0].name}",component="vmm"} >= 1`)).length === 1);
      await until('both still up after the recovery', async () => (await query('up{job="tsvmm"} == 1')).length === 2);
      const rec = await query(`tsvmm_component_recovery_duration_seconds_count{vm="${vms[0].name}",component="vmm"}`);
      assert.ok(rec.length >= 1 && Number(rec[0].value[1]) >= 1, JSON.stringify(rec));
    });
  });
});
