/**
 * The management API's schema (priv-domain/openapi.yaml), loaded and compiled with ajv, so the
 * code is driven by it and cannot drift from it:
 *   - `route()` finds the operation for a method and path from the spec's paths (404 for a path
 *     it does not list, 405 with `Allow` for a method it does not list);
 *   - `validate()` checks the path and query parameters, the headers it declares, the
 *     Content-Type and the JSON body against the operation's schemas, and answers the first
 *     problem as one line (400, 404 for an unknown enum member in the path, 415);
 *   - `responseValidator()` is what test/openapi.test.ts checks live responses with.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as yaml from 'js-yaml';
import Ajv, { ErrorObject, ValidateFunction } from 'ajv';

import { SPEC_FILE } from '../contracts/vm-config-schema';
export { SPEC_FILE };
export const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options'] as const;

/** A 4xx/5xx answer: {"error": message}, with extra headers (Allow on a 405). */
export class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly headers: Record<string, string> = {}) { super(message); }
}

type Json = Record<string, unknown>;

interface Param { name: string; in: 'path' | 'query' | 'header'; required?: boolean; schema: Json; description?: string; 'x-name'?: string }

export interface Operation {
  id: string;
  method: string;
  template: string;
  params: Param[];
  body?: { required: boolean; schema: Json };
  responses: Record<string, Json>;
}

/** An operation's validators, compiled on first use (compiling them all costs a priv-domain start ~0.5 s). */
class Compiled {
  private readonly cache = new Map<string, ValidateFunction>();
  constructor(readonly op: Operation, private readonly ajv: Ajv, private readonly ajvCoerce: Ajv) {}

  param(p: Param): ValidateFunction {
    const k = `${p.in}:${p.name}`;
    let v = this.cache.get(k);
    if (!v) {
      // Path and query values arrive as text: coerce them to the schema's type.
      v = (p.in === 'header' ? this.ajv : this.ajvCoerce).compile(rebase({ type: 'object', properties: { v: p.schema } }));
      this.cache.set(k, v);
    }
    return v;
  }

  body(): ValidateFunction {
    let v = this.cache.get('body');
    if (!v) {
      v = this.ajv.compile(rebase(this.op.body!.schema));
      this.cache.set('body', v);
    }
    return v;
  }
}

interface PathEntry { template: string; re: RegExp; names: string[]; ops: Map<string, Compiled> }

/** What a validated request carries into its handler. */
export interface Request {
  op: Operation;
  path: Record<string, string>;
  query: Record<string, unknown>;
  /** The JSON body (undefined when none was sent). */
  body?: Json;
}

export function loadSpec(file = SPEC_FILE): Json {
  return yaml.load(fs.readFileSync(file, 'utf8')) as Json;
}

/** A schema from the spec, its local $refs pointed at the spec document ajv holds as "openapi". */
function rebase(schema: unknown): Json {
  const walk = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(walk);
    if (v === null || typeof v !== 'object') return v;
    return Object.fromEntries(Object.entries(v as Json).map(([k, x]) => [k, k === '$ref' && typeof x === 'string' && x.startsWith('#/') ? `openapi${x}` : walk(x)]));
  };
  return walk(schema) as Json;
}

function newAjv(coerce: boolean): Ajv {
  // strict off: OpenAPI adds keywords (example, nullable is ajv's own) and the spec document
  // around the schemas is not a schema.
  const ajv = new Ajv({ strict: false, coerceTypes: coerce, allErrors: !coerce, formats: { binary: true }, validateSchema: false });
  return ajv;
}

export class ApiSpec {
  readonly doc: Json;
  readonly version: string;
  private readonly paths: PathEntry[] = [];
  private readonly ajv = newAjv(false);
  private readonly ajvCoerce = newAjv(true);

  constructor(doc: Json = loadSpec()) {
    this.doc = doc;
    this.version = String((doc.info as Json).version);
    this.ajv.addSchema(doc, 'openapi');
    this.ajvCoerce.addSchema(doc, 'openapi');
    for (const [template, item] of Object.entries(doc.paths as Record<string, Json>)) {
      const names: string[] = [];
      const re = new RegExp('^' + template.split('/').map((seg) => {
        const m = /^\{(\w+)\}$/.exec(seg);
        if (!m) return seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
        names.push(m[1]);
        return '([^/]+)';
      }).join('/') + '$');
      const shared = (item.parameters as Json[] | undefined) ?? [];
      const ops = new Map<string, Compiled>();
      for (const m of METHODS) {
        const o = item[m] as Json | undefined;
        if (!o) continue;
        const params = [...shared, ...((o.parameters as Json[] | undefined) ?? [])].map((p) => this.deref(p) as unknown as Param);
        const rb = o.requestBody ? this.deref(o.requestBody as Json) : undefined;
        const op: Operation = {
          id: String(o.operationId ?? `${m} ${template}`), method: m.toUpperCase(), template, params,
          body: rb && { required: rb.required === true, schema: ((rb.content as Json)['application/json'] as Json).schema as Json },
          responses: o.responses as Record<string, Json>,
        };
        ops.set(op.method, new Compiled(op, this.ajv, this.ajvCoerce));
      }
      this.paths.push({ template, re, names, ops });
    }
  }

  /** `{$ref: '#/components/...'}` -> the object it points to. */
  deref(o: Json): Json {
    let cur = o;
    for (let i = 0; i < 8 && typeof cur.$ref === 'string'; i++) {
      cur = (cur.$ref as string).slice(2).split('/').reduce<Json>((a, k) => a[k.replace(/~1/g, '/').replace(/~0/g, '~')] as Json, this.doc);
    }
    return cur;
  }

  get operations(): Operation[] {
    return this.paths.flatMap((p) => [...p.ops.values()].map((c) => c.op));
  }

  /** The operation for `method` on `pathname`, with its raw path parameters. */
  route(method: string, pathname: string): { compiled: Compiled; raw: Record<string, string> } {
    for (const p of this.paths) {
      const m = p.re.exec(pathname);
      if (!m) continue;
      const compiled = p.ops.get(method);
      if (!compiled) {
        const allow = [...p.ops.keys()].join(', ');
        throw new ApiError(405, `${method} is not allowed on ${pathname} (allowed: ${allow})`, { Allow: allow });
      }
      const raw: Record<string, string> = {};
      p.names.forEach((n, i) => {
        try { raw[n] = decodeURIComponent(m[i + 1]); } catch { throw new ApiError(400, `malformed path parameter ${n} "${m[i + 1]}"`); }
      });
      return { compiled, raw };
    }
    throw new ApiError(404, `no such endpoint: ${method} ${pathname} (the API is described in priv-domain/openapi.yaml)`);
  }

  /**
   * Validates a routed request; throws ApiError with one line. `body` is the raw text (empty:
   * none), `contentType` its header.
   */
  validate(r: { compiled: Compiled; raw: Record<string, string> }, query: URLSearchParams, headers: Record<string, string | string[] | undefined>,
    body: string, contentType: string | undefined): Request {
    const { op } = r.compiled;
    const out: Request = { op, path: {}, query: {} };
    const check = (p: Param, value: unknown): unknown => {
      const v = r.compiled.param(p);
      const holder = { v: value };
      if (v(holder)) return holder.v;
      const e = v.errors![0];
      const label = p['x-name'] ?? p.name;
      const shown = typeof value === 'string' ? `"${value}"` : String(value);
      if (p.in === 'path' && e.keyword === 'enum') {
        throw new ApiError(404, `unknown ${label} ${shown} (${((p.schema.enum as string[]) ?? []).join(', ')})`);
      }
      if (e.keyword === 'pattern' && p.description) throw new ApiError(400, p.in === 'header' ? `${label} must be ${p.description}` : `invalid ${label} ${shown}: ${p.description}`);
      throw new ApiError(400, `${p.in === 'path' ? `invalid ${label} ${shown}: ` : `${label} `}${humanize(e)}`);
    };
    const declared = new Set<string>();
    for (const p of op.params) {
      if (p.in === 'path') out.path[p.name] = check(p, r.raw[p.name]) as string;
      else if (p.in === 'query') {
        declared.add(p.name);
        const all = query.getAll(p.name);
        if (all.length > 1) throw new ApiError(400, `query parameter ${p.name} given ${all.length} times`);
        if (all.length === 0) {
          if (p.required) throw new ApiError(400, `missing query parameter ${p.name}`);
          if (p.schema.default !== undefined) out.query[p.name] = p.schema.default;
          continue;
        }
        out.query[p.name] = check(p, all[0]);
      } else if (p.in === 'header') {
        const h = headers[p.name.toLowerCase()];
        if (h === undefined) { if (p.required) throw new ApiError(400, `missing header ${p.name}`); continue; }
        if (Array.isArray(h)) throw new ApiError(400, `header ${p.name} given ${h.length} times`);
        check(p, h);
      }
    }
    for (const k of query.keys()) {
      if (!declared.has(k)) throw new ApiError(400, `unknown query parameter "${k}" (${declared.size ? `allowed: ${[...declared].join(', ')}` : `${op.method} ${op.template} takes none`})`);
    }
    if (body.length === 0) {
      if (op.body?.required) throw new ApiError(400, `${op.method} ${op.template} needs a JSON body`);
      return out;
    }
    if (!op.body) throw new ApiError(400, `${op.method} ${op.template} takes no body`);
    const ct = (contentType ?? '').split(';')[0].trim().toLowerCase();
    if (ct !== 'application/json') {
      throw new ApiError(415, `the body must be JSON sent with Content-Type: application/json (got ${contentType ? `"${contentType}"` : 'no Content-Type'})`);
    }
    let v: unknown;
    try {
      v = JSON.parse(body);
    } catch (e) {
      throw new ApiError(400, `malformed JSON body: ${(e as Error).message}`);
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ApiError(400, 'the JSON body must be an object');
    const bv = r.compiled.body();
    if (!bv(v)) {
      // An unknown field says more than the missing one it was probably meant to be.
      const errs = bv.errors!;
      throw new ApiError(400, bodyError(errs.find((e) => e.keyword === 'additionalProperties') ?? errs[0]));
    }
    out.body = v as Json;
    return out;
  }

  /** A validator for a response to `op` with `status`: returns the problems, [] when it conforms. */
  responseValidator(op: Operation, status: number): (contentType: string | undefined, body: string, headers: Record<string, unknown>) => string[] {
    const resp = op.responses[String(status)] ?? op.responses.default;
    if (!resp) return () => [`status ${status} is not documented for ${op.method} ${op.template}`];
    const r = this.deref(resp);
    const content = r.content as Record<string, Json> | undefined;
    return (contentType, body, headers) => {
      const problems: string[] = [];
      const ct = (contentType ?? '').split(';')[0].trim();
      if (!content) {
        if (body.length) problems.push(`a body where none is documented (${status})`);
        return problems;
      }
      const media = content[ct];
      if (!media) return [`Content-Type "${contentType}" is not documented for ${status} (documented: ${Object.keys(content).join(', ')})`];
      for (const [h, spec] of Object.entries((r.headers as Record<string, Json> | undefined) ?? {})) {
        const hv = headers[h.toLowerCase()];
        if (hv !== undefined && (this.deref(spec).schema as Json)?.type === 'integer' && !/^\d+$/.test(String(hv))) problems.push(`header ${h} "${String(hv)}" is not an integer`);
      }
      if (ct !== 'application/json') return problems;
      let v: unknown;
      try { v = JSON.parse(body); } catch { return [`a body that is not JSON: ${body.slice(0, 80)}`]; }
      const validate = this.ajv.compile(rebase(media.schema));
      if (!validate(v)) problems.push(...validate.errors!.map((e) => `${e.instancePath || '(body)'} ${e.message} ${JSON.stringify(e.params)}`));
      return problems;
    };
  }
}

function humanize(e: ErrorObject): string {
  if (e.keyword === 'type') return `must be ${/^[aeiou]/.test(String(e.params.type)) ? 'an' : 'a'} ${e.params.type}`;
  if (e.keyword === 'enum') return `must be one of ${(e.params.allowedValues as unknown[]).join(', ')}`;
  return e.message ?? e.keyword;
}

function bodyError(e: ErrorObject): string {
  const field = e.instancePath.slice(1).replace(/\//g, '.');
  if (e.keyword === 'additionalProperties') {
    const at = field ? ` in "${field}"` : '';
    return `unknown field "${e.params.additionalProperty}"${at}`;
  }
  if (e.keyword === 'required') return `missing field "${field ? `${field}.` : ''}${e.params.missingProperty}"`;
  if (!field) return `the JSON body ${humanize(e)}`;
  return `field "${field}" ${humanize(e)}`;
}

let cached: ApiSpec | undefined;
/** The spec of this build (loaded and compiled once per process). */
export function apiSpec(): ApiSpec {
  cached ??= new ApiSpec();
  return cached;
}
