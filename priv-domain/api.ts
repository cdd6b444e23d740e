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
import type { Store, StoredResponse } from '../contracts/store';
import { fingerprint } from '../contracts/store';
import type { ComponentStatus, ControlReply, VmConfig } from '../proto';
import type { ControlPage } from '../contracts/control-page';
import { KillComponent, killSignal } from '../contracts/signals';
import { ApiError, apiSpec } from './openapi';
import { versionInfo } from '../contracts/version';

export const MAX_BODY = 64 * 1024;
export { ApiError };

/** What a command for the supervisor carries besides its name (proto ControlRequest). */
export interface CommandArgs { component?: string; signal?: string; dir?: string; stop?: boolean; force?: boolean; timeoutMs?: number }

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
  /** Pushes serial input for `session` (one writer at a time); returns the bytes queued. */
  consoleInput(data: Buffer, session: string, release: boolean): number;
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
      send(res, { status: err.status, body: { error: err.message }, headers: { ...err.headers, ...(err.status === 413 ? { Connection: 'close' } : {}) } });
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
  const spec = apiSpec();
  const route = spec.route(method, p);
  if (route.compiled.op.id === 'killComponent' && route.raw.component === 'supervisor') {
    throw new ApiError(400, 'the supervisor is not killed through its own API: use `tsvmm stop`');
  }
  const mutating = method === 'POST' || method === 'PUT' || method === 'DELETE' || method === 'PATCH';
  const body = mutating ? await readBody(req) : '';
  const input = spec.validate(route, url.searchParams, req.headers, body, req.headers['content-type']);
  const key = req.headers['idempotency-key'] as string | undefined;
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
  const b = input.body ?? {};

  switch (input.op.id) {
    case 'health': send(res, { status: 200, body: { ok: true, name: ctx.cfg.name } }); return;
    case 'version': send(res, { status: 200, body: { ...versionInfo(), api: spec.version } }); return;
    case 'metrics': {
      const m = await ctx.metrics();
      res.writeHead(200, { 'Content-Type': m.contentType });
      res.end(m.text);
      return;
    }
    case 'getVm': {
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
    case 'listComponents': {
      const comps = ctx.components();
      if (!comps) throw new ApiError(503, 'the supervisor has not reported the components yet: retry');
      const now = Date.now() / 1000;
      send(res, { status: 200, body: comps.map((c) => ({ ...c, uptimeSeconds: c.startedAt ? Math.max(0, now - c.startedAt) : null })) });
      return;
    }
    case 'listEvents':
      send(res, { status: 200, body: ctx.store.events(input.query.since as number, input.query.limit as number) });
      return;
    case 'listLabels': send(res, { status: 200, body: ctx.store.labels() }); return;
    case 'getLabel': {
      const k = input.path.key;
      const v = ctx.store.labels()[k];
      if (v === undefined) throw new ApiError(404, `no label "${k}"`);
      send(res, { status: 200, body: { key: k, value: v } });
      return;
    }
    case 'setLabel': {
      const k = input.path.key;
      const v = b.value as string;
      commit(() => { ctx.store.setLabel(k, v); ctx.store.addEvent(ctx.runId, 'label-set', { key: k, value: v }); return { status: 200, body: { key: k, value: v } }; });
      return;
    }
    case 'deleteLabel': {
      const k = input.path.key;
      commit(() => {
        if (!ctx.store.deleteLabel(k)) throw new ApiError(404, `no label "${k}"`);
        ctx.store.addEvent(ctx.runId, 'label-deleted', { key: k });
        return { status: 200, body: { key: k, deleted: true } };
      });
      return;
    }
    case 'listAnnotations': send(res, { status: 200, body: ctx.store.annotations() }); return;
    case 'addAnnotation': {
      const text = b.text as string;
      commit(() => ({ status: 201, body: ctx.store.addAnnotation(text) }));
      return;
    }
    case 'stop': {
      // The power button, then a hard stop after timeoutSeconds (the supervisor's default if
      // absent); force, or a timeout of 0: the hard stop at once.
      const timeoutSeconds = b.timeoutSeconds as number | undefined;
      const force = b.force === true || timeoutSeconds === 0;
      await ctx.command('stop', { force, timeoutMs: timeoutSeconds ? Math.max(1, Math.round(timeoutSeconds * 1000)) : undefined });
      commit(() => {
        const ev = ctx.store.addEvent(ctx.runId, 'stop-requested', { force, ...(timeoutSeconds === undefined ? {} : { timeoutSeconds }) });
        return { status: 200, body: { name: ctx.cfg.name, state: 'stopping', event: ev.id } };
      });
      return;
    }
    case 'powerButton': {
      await ctx.command('power-button');
      commit(() => {
        const ev = ctx.store.addEvent(ctx.runId, 'power-button', {});
        return { status: 200, body: { name: ctx.cfg.name, state: ctx.control?.pauseRequested ? 'paused' : 'running', event: ev.id } };
      });
      return;
    }
    case 'pause':
    case 'resume': {
      const cmd = input.op.id;
      await ctx.command(cmd);
      const state = cmd === 'pause' ? 'paused' : 'running';
      commit(() => {
        const ev = ctx.store.addEvent(ctx.runId, cmd === 'pause' ? 'paused' : 'resumed', {});
        return { status: 200, body: { name: ctx.cfg.name, state, event: ev.id } };
      });
      return;
    }
    case 'killComponent': {
      const component = input.path.component as KillComponent;
      const asked = killSignal(component, (b.signal as string | undefined) ?? 'SIGKILL');
      if ('error' in asked) throw new ApiError(400, asked.error);
      const signal = asked.name;
      const sig = asked.signal;
      if (component === 'priv-domain') {
        // This process: record it, answer, then take the signal.
        commit(() => { ctx.store.addEvent(ctx.runId, 'kill', { component, signal, pid: process.pid }); return { status: 200, body: { component, signal, pid: process.pid } }; });
        res.on('finish', () => setTimeout(() => process.kill(process.pid, sig), 20));
        return;
      }
      const r = await ctx.command('kill', { component, signal });
      commit(() => { ctx.store.addEvent(ctx.runId, 'kill', { component, signal, pid: r.pid }); return { status: 200, body: { component, signal, pid: r.pid ?? 0 } }; });
      return;
    }
    case 'update': {
      const component = (b.component as string | undefined) ?? 'all';
      const r = await ctx.command('update', { component });
      commit(() => {
        const ev = ctx.store.addEvent(ctx.runId, 'update', { component, vmmPauseMs: r.pauseMs ?? 0, driverDomainHandoverMs: r.handoverMs ?? 0 });
        return { status: 200, body: { name: ctx.cfg.name, component, vmmPauseMs: r.pauseMs ?? 0, driverDomainHandoverMs: r.handoverMs ?? 0, event: ev.id } };
      });
      return;
    }
    case 'snapshot': {
      const dir = b.dir as string;
      if (!dir.startsWith('/')) throw new ApiError(400, `dir "${dir}" is not an absolute path`);
      const stop = b.stop === true;
      const r = await ctx.command('snapshot', { dir, stop });
      commit(() => {
        const ev = ctx.store.addEvent(ctx.runId, 'snapshot', { dir, stop, pauseMs: r.pauseMs ?? 0 });
        return { status: 200, body: { name: ctx.cfg.name, dir, pauseMs: r.pauseMs ?? 0, ramDataBytes: r.ramDataBytes ?? 0, state: stop ? 'stopping' : 'running', event: ev.id } };
      });
      return;
    }
    case 'readConsole': consoleHandler(req, res, url); return;
    case 'writeConsole': {
      const data = Buffer.from(b.data as string, 'utf8');
      send(res, { status: 200, body: { bytes: data.length, accepted: ctx.consoleInput(data, b.session as string, b.release === true) } });
      return;
    }
    default:
      throw new ApiError(501, `${input.op.method} ${input.op.template} (${input.op.id}) is in the schema but not implemented`);
  }
}
