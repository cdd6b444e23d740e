/**
 * The management API and its schema agree:
 *   - priv-domain/openapi.yaml is a valid OpenAPI 3.0 document (swagger-parser);
 *   - every operation it documents is replayed against a live VM and each response (status,
 *     Content-Type, headers, body) is checked against it, errors included;
 *   - the server refuses what the schema does not allow (400 / 404 / 405 with Allow / 415).
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as http from 'http';
import SwaggerParser from '@apidevtools/swagger-parser';
import { requireKvm } from './helpers/tsvmm';
import { sleep, startVm, TestVm } from './helpers/control-plane';
import { ApiSpec, loadSpec, Operation } from '../priv-domain/openapi';
import { KILL_COMPONENTS } from '../contracts/signals';

interface Raw { status: number; headers: http.IncomingHttpHeaders; body: string }

function raw(socket: string, method: string, p: string, body?: string, headers: Record<string, string> = {}): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, method, path: p, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

const JSON_CT = { 'Content-Type': 'application/json' };

describe('the management API and openapi.yaml', function () {
  this.timeout(120_000);

  it('openapi.yaml is a valid OpenAPI document', async () => {
    await SwaggerParser.validate(loadSpec() as never);
    // ... and every operation has an id, which is what the server dispatches on.
    const spec = new ApiSpec();
    const ids = spec.operations.map((o) => o.id);
    assert.equal(new Set(ids).size, ids.length, `duplicate operationIds: ${ids}`);
    for (const o of spec.operations) assert.ok(!o.id.includes(' '), `${o.method} ${o.template} has no operationId`);
    // The components the kill path takes are the ones the code signals.
    const kill = spec.operations.find((o) => o.id === 'killComponent')!;
    assert.deepEqual(kill.params.find((p) => p.name === 'component')!.schema.enum, [...KILL_COMPONENTS]);
  });

  it('requests are validated against the schema (no VM needed)', () => {
    const spec = new ApiSpec();
    const q = (s = '') => new URLSearchParams(s);
    const ok = spec.validate(spec.route('GET', '/v1/vm/events'), q('since=3'), {}, '', undefined);
    assert.deepEqual(ok.query, { since: 3, limit: 1000 });
    const bad: [() => unknown, number, RegExp][] = [
      [() => spec.route('DELETE', '/v1/vm'), 405, /DELETE is not allowed on \/v1\/vm \(allowed: GET\)/],
      [() => spec.route('GET', '/v1/nope'), 404, /no such endpoint/],
      [() => spec.validate(spec.route('GET', '/v1/vm/events'), q('since=-1'), {}, '', undefined), 400, /since must be >= 0/],
      [() => spec.validate(spec.route('GET', '/v1/vm/events'), q('sinse=1'), {}, '', undefined), 400, /unknown query parameter "sinse"/],
      [() => spec.validate(spec.route('POST', '/v1/vm/annotations'), q(), {}, '{"text":"a"}', undefined), 415, /Content-Type: application\/json/],
      [() => spec.validate(spec.route('POST', '/v1/vm/annotations'), q(), {}, '{"text":"a"}', 'text/plain'), 415, /got "text\/plain"/],
      [() => spec.validate(spec.route('POST', '/v1/vm/annotations'), q(), {}, '', undefined), 400, /needs a JSON body/],
      [() => spec.validate(spec.route('GET', '/v1/vm'), q(), {}, '{}', 'application/json'), 400, /takes no body/],
      [() => spec.validate(spec.route('POST', '/v1/vm/components/hypervisor/kill'), q(), {}, '', undefined), 404, /unknown component "hypervisor"/],
      [() => spec.validate(spec.route('PUT', '/v1/vm/labels/bad%20key'), q(), {}, '{"value":"v"}', 'application/json'), 400, /invalid label key "bad key"/],
      [() => spec.validate(spec.route('PUT', '/v1/vm/labels/k'), q(), {}, '{"value":5}', 'application/json'), 400, /field "value" must be a string/],
      [() => spec.validate(spec.route('PUT', '/v1/vm/labels/k'), q(), {}, '{}', 'application/json'), 400, /missing field "value"/],
      [() => spec.validate(spec.route('POST', '/v1/vm/pause'), q(), { 'idempotency-key': 'a b' }, '', undefined), 400, /Idempotency-Key must be 1-200 printable/],
    ];
    for (const [f, status, re] of bad) {
      assert.throws(f, (e: { status: number; message: string }) => { assert.equal(e.status, status, e.message); assert.match(e.message, re); return true; });
    }
  });

  describe('against a live VM', function () {
    before(requireKvm);
    let vm: TestVm;
    let spec: ApiSpec;
    before(async () => {
      spec = new ApiSpec();
      // power_button=ignore: the power-button call below must not end the VM before the rest is replayed.
      vm = await startVm({ name: `operator-oas-${process.pid}`, cmdline: 'workload=blk-loop blk_n=2000 qd=16 mode=seq verify=1 blk_report=200 virtio_irq=1 power_button=ignore' });
      const t0 = Date.now();
      while (vm.progress() < 1 && Date.now() - t0 < 20_000) await sleep(50);
    });
    after(async () => {
      await vm?.stop();
      if (vm) fs.rmSync(vm.dir, { recursive: true, force: true });
    });

    /** Sends one request and checks the response against the spec's operation. */
    async function replay(op: Operation, p: string, body?: unknown, headers: Record<string, string> = {}): Promise<Raw> {
      const data = body === undefined ? undefined : JSON.stringify(body);
      const send = () => raw(vm.socket, op.method, p, data, data ? { ...JSON_CT, ...headers } : headers).catch((e: NodeJS.ErrnoException) => e);
      // A priv-domain being restarted: no socket for a moment, then 503 until it hears from the supervisor.
      let r = await send();
      for (let i = 0; (r instanceof Error || r.status === 503) && i < 200; i++) { await sleep(50); r = await send(); }
      if (r instanceof Error) throw r;
      const problems = spec.responseValidator(op, r.status)(r.headers['content-type'], r.body, r.headers);
      assert.deepEqual(problems, [], `${op.method} ${p} -> ${r.status}: ${r.body.slice(0, 300)}`);
      return r;
    }

    it('every documented operation, replayed, answers what the schema says', async () => {
      const ops = new Map(spec.operations.map((o) => [o.id, o]));
      const done = new Set<string>();
      const call = async (id: string, p: string, status: number, body?: unknown, headers?: Record<string, string>) => {
        const op = ops.get(id);
        assert.ok(op, `no operation ${id} in the schema`);
        const r = await replay(op, p, body, headers);
        assert.equal(r.status, status, `${id} ${p}: ${r.body}`);
        done.add(id);
        return r;
      };
      await call('health', '/v1/health', 200);
      const ver = JSON.parse((await call('version', '/v1/version', 200)).body) as { version: string; api: string };
      assert.equal(ver.version, JSON.parse(fs.readFileSync(`${__dirname}/../../package.json`, 'utf8')).version);
      assert.equal(ver.api, spec.version);
      const info = JSON.parse((await call('getVm', '/v1/vm', 200)).body) as { metricsAddr: string; config: { metricsAddr: string } };
      assert.equal(info.config.metricsAddr, '127.0.0.1:0', 'config.metricsAddr is the address asked for');
      assert.match(info.metricsAddr, /^127\.0\.0\.1:[1-9]\d*$/, 'metricsAddr is the address bound');
      await call('listComponents', '/v1/vm/components', 200);
      await call('setLabel', '/v1/vm/labels/owner', 200, { value: 'alice' }, { 'Idempotency-Key': `oas-${Date.now()}` });
      await call('getLabel', '/v1/vm/labels/owner', 200);
      await call('listLabels', '/v1/vm/labels', 200);
      await call('deleteLabel', '/v1/vm/labels/owner', 200);
      await call('deleteLabel', '/v1/vm/labels/owner', 404);
      await call('getLabel', '/v1/vm/labels/owner', 404);
      await call('addAnnotation', '/v1/vm/annotations', 201, { text: 'replayed' });
      await call('listAnnotations', '/v1/vm/annotations', 200);
      await call('pause', '/v1/vm/pause', 200, {});
      await call('resume', '/v1/vm/resume', 200);
      await call('listEvents', '/v1/vm/events?since=0&limit=5', 200);
      await call('listEvents', '/v1/vm/events?limit=0', 400);
      const c = await call('readConsole', '/v1/vm/console?follow=0', 200);
      assert.match(c.headers['x-console-start'] as string, /^\d+$/);
      await call('readConsole', '/v1/vm/console?since=x', 400);
      await call('writeConsole', '/v1/vm/console/input', 200, { data: 'typed\r', session: 'oas-a' });
      await call('writeConsole', '/v1/vm/console/input', 409, { data: 'x', session: 'oas-b' });
      await call('writeConsole', '/v1/vm/console/input', 200, { data: '', session: 'oas-a', release: true });
      await call('writeConsole', '/v1/vm/console/input', 200, { data: 'x', session: 'oas-b', release: true });
      await call('metrics', '/metrics', 200);
      await call('snapshot', '/v1/vm/snapshot', 400, { dir: 'relative/dir' });
      await call('snapshot', '/v1/vm/snapshot', 200, { dir: `${vm.dir}/snap` }, { 'Idempotency-Key': `oas-snap-${Date.now()}` });
      await call('killComponent', '/v1/vm/components/driver-domain/kill', 200, { signal: 'SIGKILL' });
      await call('killComponent', '/v1/vm/components/vmm/kill', 400, { signal: 'SIGNOPE' });
      await call('killComponent', '/v1/vm/components/keeper/kill', 400, { signal: 'SIGTERM' });
      await call('killComponent', '/v1/vm/components/hypervisor/kill', 404, {});
      await call('killComponent', '/v1/vm/components/supervisor/kill', 400, {});
      await call('update', '/v1/vm/update', 400, { component: 'bogus' });
      await call('update', '/v1/vm/update', 200, { component: 'priv-domain' });
      await call('killComponent', '/v1/vm/components/priv-domain/kill', 200);
      await call('listComponents', '/v1/vm/components', 200);
      await call('powerButton', '/v1/vm/power-button', 200, {});
      await call('stop', '/v1/vm/stop', 400, { timeoutSeconds: -1 });
      await call('stop', '/v1/vm/stop', 400, { force: 'yes' });
      // This guest ignores the button: stopped hard after the timeout.
      await call('stop', '/v1/vm/stop', 200, { timeoutSeconds: 1 }, { 'Idempotency-Key': `oas-stop-${Date.now()}` });
      const missing = [...ops.keys()].filter((id) => !done.has(id));
      assert.deepEqual(missing, [], 'operations in openapi.yaml this test did not replay');
      assert.equal(await vm.exited, 0, 'a requested stop is not an error');
    });
  });
});

describe('the management API refuses what the schema does not allow', function () {
  this.timeout(120_000);
  before(requireKvm);
  let vm: TestVm;
  before(async () => { vm = await startVm({ name: `operator-oas2-${process.pid}`, disk: false, cmdline: 'workload=counter n=100000000000 report=1000000000' }); });
  after(async () => {
    await vm?.stop();
    if (vm) fs.rmSync(vm.dir, { recursive: true, force: true });
  });

  it('405 carries Allow, 415 without Content-Type, 400 for an unknown query parameter or signal', async () => {
    const spec = new ApiSpec();
    const errOf = (r: Raw) => {
      const op = spec.operations[0];
      assert.deepEqual(spec.responseValidator(op, r.status)(r.headers['content-type'], r.body, r.headers), [], r.body);
      return (JSON.parse(r.body) as { error: string }).error;
    };
    const m = await raw(vm.socket, 'DELETE', '/v1/vm/annotations');
    assert.equal(m.status, 405);
    assert.equal(m.headers.allow, 'GET, POST');
    assert.match(errOf(m), /DELETE is not allowed/);
    const ct = await raw(vm.socket, 'POST', '/v1/vm/annotations', '{"text": "x"}');
    assert.equal(ct.status, 415, ct.body);
    assert.match(errOf(ct), /Content-Type: application\/json/);
    const q = await raw(vm.socket, 'GET', '/v1/vm/events?sinse=3');
    assert.equal(q.status, 400);
    assert.match(errOf(q), /unknown query parameter "sinse"/);
    const sig = await raw(vm.socket, 'POST', '/v1/vm/components/vmm/kill', '{"signal": "SIGNOPE"}', JSON_CT);
    assert.equal(sig.status, 400, sig.body);
    assert.match(errOf(sig), /unknown signal "SIGNOPE"/);
    const body = await raw(vm.socket, 'GET', '/v1/vm', '{}', JSON_CT);
    assert.equal(body.status, 200, 'a GET body is not read');
  });
});
