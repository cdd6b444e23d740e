/**
 * The management API: HTTP/1.1 + JSON on a unix socket (priv-domain/openapi.yaml is the
 * schema). Every error is a JSON object {"error": "one line"} with a 4xx/5xx status.
 *
 * Mutating requests (POST, PUT, DELETE) may carry an Idempotency-Key header: the change and the
 * response are committed to the store in one transaction, so a client that retries with the same
 * key (because the priv-domain died, or the answer got lost) gets the stored response and the
 * change is applied exactly once. The same key with a different request is a 422.
 */
import * as http from 'http';
import { URL } from 'url';
import type { Store, StoredResponse } from './store';
import { fingerprint } from './store';
import type { ComponentStatus, ControlReply, VmConfig } from '../proto';
import type { ControlPage } from '../contracts/control-page';
import { KILL_COMPONENTS, KillComponent, killSignal } from '../contracts/signals';

export const MAX_BODY = 64 * 1024;
const LABEL_KEY_RE = /^[A-Za-z_][A-Za-z0-9_.\-/]{0,62}$/;
const IDEMPOTENCY_KEY_RE = /^[\x21-\x7e]{1,200}$/;

export class ApiError extends Error {
  constructor(readonly status: number, message: string) { super(message); }
}

/** What a command for the supervisor carries besides its name (proto ControlRequest). */
export interface CommandArgs { component?: string; signal?: string; dir?: string; stop?: boolean }

export interface ApiContext {
  cfg: VmConfig;
  runId: string;
  store: Store;
  control?: ControlPage;
  startedAt: number;
  metricsAddr(): string;
  components(): ComponentStatus[] | undefined;
  /** Sends a command to the supervisor; resolves with its answer or throws ApiError. */
  command(command: string, args?: CommandArgs): Promise<ControlReply>;
  metrics(): Promise<{ text: string; contentType: string }>;
  onRequest(method: string, code: number): void;
}

type Reply = StoredResponse & { headers?: Record<string, string> };

function send(res: http.ServerResponse, r: Reply): void {
  const body = JSON.stringify(r.body, null, 1) + '\n';
  res.writeHead(r.status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), ...(r.headers ?? {}) });
  res.end(body);
}

function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    // Over the limit: answer 413 at once and discard the rest of the body (closing the connection
    // instead would leave the client with a reset and no answer).
    const tooBig = () => { req.removeAllListeners('data'); req.resume(); reject(new ApiError(413, `request body over ${MAX_BODY} bytes`)); };
    if (Number(req.headers['content-length'] ?? 0) > MAX_BODY) { tooBig(); return; }
    req.on('data', (c: Buffer) => {
      n += c.length;
      if (n > MAX_BODY) { tooBig(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function parseJson(body: string): Record<string, unknown> {
  if (body.trim() === '') return {};
  let v: unknown;
  try {
    v = JSON.parse(body);
  } catch (e) {
    throw new ApiError(400, `malformed JSON body: ${(e as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ApiError(400, 'the JSON body must be an object');
  return v as Record<string, unknown>;
}

function onlyFields(o: Record<string, unknown>, allowed: string[]): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) throw new ApiError(400, `unknown field "${k}" (allowed: ${allowed.join(', ') || 'none'})`);
}

function str(o: Record<string, unknown>, k: string, required: boolean, max = 4096): string | undefined {
  const v = o[k];
  if (v === undefined) {
    if (required) throw new ApiError(400, `missing field "${k}"`);
    return undefined;
  }
  if (typeof v !== 'string') throw new ApiError(400, `field "${k}" must be a string`);
  if (v.length > max) throw new ApiError(400, `field "${k}" is longer than ${max} characters`);
  return v;
}

export function vmState(ctx: ApiContext): string {
  return ctx.control?.pauseRequested ? 'paused' : 'running';
}

export function createApiHandler(ctx: ApiContext, consoleHandler: (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => void) {
  return (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const method = req.method ?? 'GET';
    res.on('finish', () => ctx.onRequest(method, res.statusCode));
    handle(ctx, req, res, consoleHandler).catch((e: unknown) => {
      const err = e instanceof ApiError ? e : new ApiError(500, `internal error: ${(e as Error).message}`);
      if (res.headersSent) { res.destroy(); return; }
      send(res, { status: err.status, body: { error: err.message }, headers: err.status === 413 ? { Connection: 'close' } : undefined });
    });
  };
}

async function handle(ctx: ApiContext, req: http.IncomingMessage, res: http.ServerResponse,
  consoleHandler: (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => void): Promise<void> {
  const method = req.method ?? 'GET';
  let url: URL;
  try {
    url = new URL(req.url ?? '/', 'http://tsvmm');
  } catch {
    throw new ApiError(400, `malformed request target "${req.url}"`);
  }
  const p = url.pathname.replace(/\/+$/, '') || '/';
  const mutating = method === 'POST' || method === 'PUT' || method === 'DELETE' || method === 'PATCH';
  const body = mutating ? await readBody(req) : '';
  const key = req.headers['idempotency-key'];
  if (key !== undefined && (Array.isArray(key) || !IDEMPOTENCY_KEY_RE.test(key))) {
    throw new ApiError(400, 'Idempotency-Key must be 1-200 printable ASCII characters without spaces');
  }
  const fp = fingerprint(method, p, body);
  if (mutating && key) {
    const prior = ctx.store.idempotent(key, fp);
    if (prior === 'conflict') throw new ApiError(422, `Idempotency-Key "${key}" was already used for a different request`);
    if (prior) { send(res, { ...prior, headers: { 'Idempotent-Replayed': 'true' } }); return; }
  }
  /** Commits `change` (store writes) and the idempotency record together, then answers. */
  const commit = (change: () => StoredResponse): void => {
    const r = ctx.store.tx(() => {
      if (key) {
        const prior = ctx.store.idempotent(key, fp);
        if (prior === 'conflict') throw new ApiError(422, `Idempotency-Key "${key}" was already used for a different request`);
        if (prior) return { ...prior, headers: { 'Idempotent-Replayed': 'true' } } as Reply;
      }
      const out = change();
      if (key) ctx.store.remember(key, fp, out);
      return out as Reply;
    });
    send(res, r);
  };
  const allow = (...methods: string[]) => {
    if (!methods.includes(method)) throw new ApiError(405, `${method} is not allowed on ${p} (allowed: ${methods.join(', ')})`);
  };

  if (p === '/v1/health' || p === '/') { allow('GET'); send(res, { status: 200, body: { ok: true, name: ctx.cfg.name } }); return; }
  if (p === '/metrics') {
    allow('GET');
    const m = await ctx.metrics();
    res.writeHead(200, { 'Content-Type': m.contentType });
    res.end(m.text);
    return;
  }
  if (p === '/v1/vm') {
    allow('GET');
    const vm = ctx.store.vm(ctx.cfg.name);
    send(res, {
      status: 200,
      body: {
        name: ctx.cfg.name, state: vmState(ctx), runId: ctx.runId, config: vm?.config ?? ctx.cfg, createdAt: vm?.createdAt,
        supervisorPid: Number(process.env.TSVMM_SUPERVISOR_PID) || undefined, privDomainPid: process.pid,
        privDomainStartedAt: ctx.startedAt, metricsAddr: ctx.metricsAddr(), labels: ctx.store.labels(),
      },
    });
    return;
  }
  if (p === '/v1/vm/components') {
    allow('GET');
    const comps = ctx.components();
    if (!comps) throw new ApiError(503, 'the supervisor has not reported the components yet: retry');
    const now = Date.now() / 1000;
    send(res, { status: 200, body: comps.map((c) => ({ ...c, uptimeSeconds: c.startedAt ? Math.max(0, now - c.startedAt) : null })) });
    return;
  }
  if (p === '/v1/vm/events') {
    allow('GET');
    const since = Number(url.searchParams.get('since') ?? 0);
    const limit = Number(url.searchParams.get('limit') ?? 1000);
    if (!Number.isInteger(since) || since < 0) throw new ApiError(400, 'since must be a non-negative integer');
    if (!Number.isInteger(limit) || limit < 1 || limit > 10000) throw new ApiError(400, 'limit must be an integer from 1 to 10000');
    send(res, { status: 200, body: ctx.store.events(since, limit) });
    return;
  }
  if (p === '/v1/vm/labels') { allow('GET'); send(res, { status: 200, body: ctx.store.labels() }); return; }
  const label = /^\/v1\/vm\/labels\/([^/]+)$/.exec(p);
  if (label) {
    allow('GET', 'PUT', 'DELETE');
    const k = decodeURIComponent(label[1]);
    if (!LABEL_KEY_RE.test(k)) throw new ApiError(400, `invalid label key "${k}": 1-63 of letters, digits, _ . - /, starting with a letter or _`);
    if (method === 'GET') {
      const v = ctx.store.labels()[k];
      if (v === undefined) throw new ApiError(404, `no label "${k}"`);
      send(res, { status: 200, body: { key: k, value: v } });
      return;
    }
    if (method === 'PUT') {
      const o = parseJson(body);
      onlyFields(o, ['value']);
      const v = str(o, 'value', true, 1024)!;
      commit(() => { ctx.store.setLabel(k, v); ctx.store.addEvent(ctx.runId, 'label-set', { key: k, value: v }); return { status: 200, body: { key: k, value: v } }; });
      return;
    }
    commit(() => {
      if (!ctx.store.deleteLabel(k)) throw new ApiError(404, `no label "${k}"`);
      ctx.store.addEvent(ctx.runId, 'label-deleted', { key: k });
      return { status: 200, body: { key: k, deleted: true } };
    });
    return;
  }
  if (p === '/v1/vm/annotations') {
    allow('GET', 'POST');
    if (method === 'GET') { send(res, { status: 200, body: ctx.store.annotations() }); return; }
    const o = parseJson(body);
    onlyFields(o, ['text']);
    const text = str(o, 'text', true, 4096)!;
    commit(() => ({ status: 201, body: ctx.store.addAnnotation(text) }));
    return;
  }
  const action = /^\/v1\/vm\/(pause|resume|stop)$/.exec(p);
  if (action) {
    allow('POST');
    onlyFields(parseJson(body), []);
    const cmd = action[1];
    await ctx.command(cmd);
    const state = cmd === 'stop' ? 'stopping' : cmd === 'pause' ? 'paused' : 'running';
    commit(() => {
      const ev = ctx.store.addEvent(ctx.runId, cmd === 'stop' ? 'stop-requested' : cmd === 'pause' ? 'paused' : 'resumed', {});
      return { status: 200, body: { name: ctx.cfg.name, state, event: ev.id } };
    });
    return;
  }
  if (p === '/v1/vm/update') {
    allow('POST');
    const o = parseJson(body);
    onlyFields(o, ['component']);
    const component = str(o, 'component', false, 32) ?? 'all';
    if (!['vmm', 'driver-domain', 'priv-domain', 'all'].includes(component)) throw new ApiError(400, `unknown component "${component}" (vmm, driver-domain, priv-domain, all)`);
    const r = await ctx.command('update', { component });
    commit(() => {
      const ev = ctx.store.addEvent(ctx.runId, 'update', { component, vmmPauseMs: r.pauseMs ?? 0, driverDomainHandoverMs: r.handoverMs ?? 0 });
      return { status: 200, body: { name: ctx.cfg.name, component, vmmPauseMs: r.pauseMs ?? 0, driverDomainHandoverMs: r.handoverMs ?? 0, event: ev.id } };
    });
    return;
  }
  if (p === '/v1/vm/snapshot') {
    allow('POST');
    const o = parseJson(body);
    onlyFields(o, ['dir', 'stop']);
    const dir = str(o, 'dir', true, 4096)!;
    if (!dir.startsWith('/')) throw new ApiError(400, `dir "${dir}" is not an absolute path`);
    if (o.stop !== undefined && typeof o.stop !== 'boolean') throw new ApiError(400, 'stop must be a boolean');
    const stop = o.stop === true;
    const r = await ctx.command('snapshot', { dir, stop });
    commit(() => {
      const ev = ctx.store.addEvent(ctx.runId, 'snapshot', { dir, stop, pauseMs: r.pauseMs ?? 0 });
      return { status: 200, body: { name: ctx.cfg.name, dir, pauseMs: r.pauseMs ?? 0, ramDataBytes: r.ramDataBytes ?? 0, state: stop ? 'stopping' : 'running', event: ev.id } };
    });
    return;
  }
  const kill = /^\/v1\/vm\/components\/([^/]+)\/kill$/.exec(p);
  if (kill) {
    allow('POST');
    const component = decodeURIComponent(kill[1]) as KillComponent;
    if (!KILL_COMPONENTS.includes(component)) {
      throw new ApiError((component as string) === 'supervisor' ? 400 : 404,
        (component as string) === 'supervisor' ? 'the supervisor is not killed through its own API: use `tsvmm stop`' : `unknown component "${component}" (${KILL_COMPONENTS.join(', ')})`);
    }
    const o = parseJson(body);
    onlyFields(o, ['signal']);
    const asked = killSignal(component, str(o, 'signal', false, 16) ?? 'SIGKILL');
    if ('error' in asked) throw new ApiError(400, asked.error);
    const signal = asked.name;
    if (component === 'priv-domain') {
      // This process: record it, answer, then take the signal.
      commit(() => { ctx.store.addEvent(ctx.runId, 'kill', { component, signal, pid: process.pid }); return { status: 200, body: { component, signal, pid: process.pid } }; });
      res.on('finish', () => setTimeout(() => process.kill(process.pid, asked.signal), 20));
      return;
    }
    const r = await ctx.command('kill', { component, signal });
    commit(() => { ctx.store.addEvent(ctx.runId, 'kill', { component, signal, pid: r.pid }); return { status: 200, body: { component, signal, pid: r.pid ?? 0 } }; });
    return;
  }
  if (p === '/v1/vm/console') { allow('GET'); consoleHandler(req, res, url); return; }
  throw new ApiError(404, `no such endpoint: ${method} ${p} (the API is described in priv-domain/openapi.yaml)`);
}
