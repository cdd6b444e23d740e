/**
 * The VM configuration's JSON schema, as the API publishes it (priv-domain/openapi.yaml,
 * components.schemas.VmConfig and the schemas it refers to), compiled with ajv: what
 * `tsvmm run --config FILE` checks a file against, so the file and the API's VM config cannot
 * drift apart. The spec file's path is defined here, once (priv-domain/openapi.ts loads it too).
 */
import * as fs from 'fs';
import * as path from 'path';
import type { ErrorObject } from 'ajv';
import { VmConfig } from '../proto';

export const SPEC_FILE = path.resolve(__dirname, '..', '..', 'priv-domain', 'openapi.yaml');

type Json = Record<string, unknown>;

let validate: ((o: unknown) => boolean) & { errors?: ErrorObject[] | null } | undefined;

function compile() {
  // Loaded here, not at the top: `tsvmm run` without --config (every start) never initialises them.
  const yaml = require('js-yaml') as typeof import('js-yaml');
  const Ajv = (require('ajv') as typeof import('ajv')).default;
  const doc = yaml.load(fs.readFileSync(SPEC_FILE, 'utf8')) as { components: Json };
  // strict off: OpenAPI keywords (description, example; nullable is ajv's own) around the schemas.
  const ajv = new Ajv({ strict: false, allErrors: false, validateSchema: false });
  ajv.addSchema({ components: doc.components }, 'openapi');
  return ajv.compile({ $ref: 'openapi#/components/schemas/VmConfig' });
}

/** One line for the first schema error: the field (a JSON pointer) and what is wrong with it. */
function describe(e: ErrorObject): string {
  const at = e.instancePath || '(the top level)';
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'additionalProperties': return `unknown field ${e.instancePath}/${String(p.additionalProperty)}`;
    case 'required': return `${e.instancePath}/${String(p.missingProperty)} is missing`;
    case 'enum': return `${at} must be one of ${(p.allowedValues as unknown[]).map(String).join(', ')}`;
    default: return `${at} ${e.message ?? 'is invalid'}`;
  }
}

/**
 * `o` checked against the VmConfig schema: returns it typed (fields the file leaves out stay
 * absent), or throws an Error whose message is one line naming the bad field.
 */
export function checkVmConfigJson(o: unknown): Partial<VmConfig> {
  validate ??= compile();
  if (!validate(o)) throw new Error(describe(validate.errors![0]));
  return o as Partial<VmConfig>;
}
