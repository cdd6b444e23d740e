/**
 * The protobuf schemas (proto/tsvmm.proto), and typed encode/decode helpers
 * for the messages tsvmm exchanges. Loaded from proto/tsvmm.json, the
 * schema already parsed (proto/generate.ts), with protobufjs/light: every
 * component loads this at start, a restarting vmm on the guest's critical path.
 */
import * as path from 'path';
import * as fs from 'fs';
import * as protobuf from 'protobufjs/light';

const root = protobuf.Root.fromJSON(JSON.parse(fs.readFileSync(path.resolve(__dirname, '..', '..', 'proto', 'tsvmm.json'), 'utf8')));

/** proto TokenBucket: `size` tokens, refilled at size per refillTimeMs; oneTimeBurst extra once. */
export interface TokenBucket { size: number; refillTimeMs: number; oneTimeBurst?: number }
/** proto RateLimit: an absent (null) bucket is no limit. */
export interface RateLimit { ops?: TokenBucket | null; bandwidth?: TokenBucket | null }
/** proto DiskCache / DiskIo, by name (the codecs map names to the enum's numbers and back). */
export type DiskCache = 'writeback' | 'none';
export type DiskIo = 'auto' | 'uring' | 'threads';
export interface DiskConfig { path: string; readOnly: boolean; cache?: DiskCache; io?: DiskIo; rateLimit?: RateLimit | null }
export interface NetConfig { tap: string; mac: string; rateLimit?: RateLimit | null }
export interface VmConfig {
  name: string; kernel: string; cmdline: string; memBytes: number; cpus: number; serialPath: string;
  disks: DiskConfig[]; nets: NetConfig[]; initrd?: string;
  /** Prometheus endpoint of the priv-domain: HOST:PORT, "none", or empty for the default. */
  metricsAddr?: string;
}
export type ComponentMessage =
  | { ready: {
    component: string; pid: number; keeperPid?: number; restoredGeneration?: number; diedNs?: number; savedNs?: number;
    standby?: boolean; warm?: boolean; resumedNs?: number; metricsAddr?: string;
  } }
  | { guestExit: { code: number; reason: string } }
  | { fatal: { message: string } }
  | { controlRequest: ControlRequest }
  | { keeperArmed: { pid: number; error?: string } }
  | { snapshotDone: SnapshotDone };

export interface ControlRequest { id: number; command: string; component?: string; signal?: string; dir?: string; stop?: boolean; force?: boolean; timeoutMs?: number }
export interface ControlReply { id: number; ok: boolean; error?: string; pid?: number; pauseMs?: number; ramDataBytes?: number; handoverMs?: number }
export interface SnapshotRequest { dir: string; stop: boolean }
export interface SnapshotDone { ok: boolean; error?: string; pauseMs: number; ramDataBytes: number; ramExtents?: number[]; written?: boolean }
export interface SnapshotFile { name: string; size: number; crc32c: number; dataBytes: number }
export interface SnapshotManifest {
  format: string; version: number; snapLayoutVersion: number; config: VmConfig; files: SnapshotFile[]; createdAt: number; pauseMs: number;
  ramExtents: number[];
}
export interface RecoveryRecord { component: string; cause: string; seconds: number; at: number; warm?: boolean }
export interface HangKillRecord { component: string; pid: number; stillMs: number; evidence: string; at: number }
export interface TakeoverRecord { component: string; pid: number; fromPid: number; ms: number; reason: string; at: number }
export interface StandbyStatus { component: string; pid: number; ready: boolean }
export type GuestState = 'starting' | 'running' | 'paused' | 'recovering';
export interface Privileges { uid: number; gid: number; capEff: string; seccomp: string; noNewPrivs: boolean }
export interface ComponentStatus {
  name: string; pid: number; state: string; startedAt: number; restarts: number; lastRecovery?: RecoveryRecord | null;
  privileges?: Privileges | null;
}
export interface ControlStatus {
  components: ComponentStatus[]; recoveries: RecoveryRecord[]; full: boolean; paused: boolean;
  hangKills?: HangKillRecord[]; takeovers?: TakeoverRecord[]; standbys?: StandbyStatus[]; guestState?: GuestState | string;
}
export type SupervisorMessage = { status: ControlStatus } | { reply: ControlReply } | { finished: { code: number; reason: string } }
  | { armKeeper: { deadPid: number } }
  | { snapshot: SnapshotRequest }
  | { handover: Record<string, never> }
  | { adopted: { supervisorPid: number } };
export interface ProcessRef { role: string; pid: number; startTicks: number }
export interface StopRecord { reason: string; code: number; requested: boolean; deadline: number; since: number }
export interface RunRecord { runId: string; standby: boolean; hangTimeoutMs: number; processes: ProcessRef[]; supervisors: number; startedAt: number;
  user: string; unconfined: boolean; stop?: StopRecord | null }

/**
 * `msg` with every enum given by name replaced by its number, for verify() (which takes numbers
 * only; toObject gives names back: `enums: String`). An unknown name is left as it is, for verify()
 * to reject.
 */
function enumNumbers(type: protobuf.Type, msg: unknown): unknown {
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) return msg;
  let out: Record<string, unknown> | undefined;
  const src = msg as Record<string, unknown>;
  for (const field of type.fieldsArray) {
    const v = src[field.name];
    if (v === undefined || v === null) continue;
    field.resolve();
    const rt = field.resolvedType;
    let w: unknown = v;
    const one = (x: unknown): unknown => {
      if (rt instanceof protobuf.Enum) return typeof x === 'string' && x in rt.values ? rt.values[x] : x;
      if (rt instanceof protobuf.Type) return enumNumbers(rt, x);
      return x;
    };
    if (rt) w = field.repeated && Array.isArray(v) ? v.map(one) : one(v);
    if (w !== v) (out ??= { ...src })[field.name] = w;
  }
  return out ?? msg;
}

const TO_OBJECT = { longs: Number, enums: String, defaults: true, arrays: true } as const;

function codec<T>(name: string) {
  const type = root.lookupType(name);
  return {
    encode(msg: T): Uint8Array {
      const m = enumNumbers(type, msg) as { [k: string]: unknown };
      const err = type.verify(m);
      if (err) throw new Error(`${name}: ${err}`);
      return type.encode(type.fromObject(m)).finish();
    },
    decode(bytes: Uint8Array): T {
      return type.toObject(type.decode(bytes), { ...TO_OBJECT, oneofs: false }) as T;
    },
  };
}

/** A message as JSON text (protobuf's JSON form: camelCase names), checked against its schema on the way in. */
function jsonCodec<T>(name: string) {
  const type = root.lookupType(name);
  return {
    stringify(msg: T): string {
      const m = enumNumbers(type, msg) as { [k: string]: unknown };
      const err = type.verify(m);
      if (err) throw new Error(`${name}: ${err}`);
      return JSON.stringify(type.toObject(type.fromObject(m), { longs: Number, enums: String, defaults: true }), null, 1) + '\n';
    },
    /** Throws a one-line Error when the text is not JSON or not this message. */
    parse(text: string): T {
      let o: unknown;
      try { o = JSON.parse(text); } catch { throw new Error('not JSON'); }
      if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new Error('not a JSON object');
      const m = enumNumbers(type, o) as { [k: string]: unknown };
      const err = type.verify(m);
      if (err) throw new Error(err);
      return type.toObject(type.fromObject(m), TO_OBJECT) as T;
    },
  };
}

export const SnapshotManifestJson = jsonCodec<SnapshotManifest>('tsvmm.SnapshotManifest');
export const VmConfigCodec = codec<VmConfig>('tsvmm.VmConfig');
export const ComponentMessageCodec = codec<ComponentMessage>('tsvmm.ComponentMessage');
export const SupervisorMessageCodec = codec<SupervisorMessage>('tsvmm.SupervisorMessage');
export const RunRecordCodec = codec<RunRecord>('tsvmm.RunRecord');

/**
 * Node parses each line of an IPC channel as JSON inside the channel's read callback, so one
 * garbled line would throw out of the event loop of the process that reads it (the supervisor, for
 * every component's channel: the fault-injection campaign lost the VM this way). This catches that
 * per child: `onBad` hears of it (the lines of that read after it are lost, so the caller should
 * treat the sender as failed).
 */
export function guardChannel(child: object, onBad: (why: string) => void): void {
  const sym = Object.getOwnPropertySymbols(child).find((s) => s.description === 'kChannelHandle');
  const handle = sym ? (child as Record<symbol, { onread?: (...a: unknown[]) => unknown }>)[sym] : undefined;
  const orig = handle?.onread;
  if (!handle || typeof orig !== 'function') return; // no IPC channel (an adopted process), or a Node whose internals differ
  handle.onread = function (this: unknown, ...a: unknown[]) {
    try {
      return orig.apply(this, a);
    } catch (e) {
      onBad(`malformed IPC line: ${(e as Error).message.slice(0, 80)}`);
      return undefined;
    }
  };
}
