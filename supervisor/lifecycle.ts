/**
 * What every component lifecycle (vmm-lifecycle.ts, driver-domain-lifecycle.ts,
 * priv-domain-lifecycle.ts) gets from the supervisor, and the records they
 * produce. A lifecycle starts its component, watches it (hang-watch.ts),
 * decides with its RestartPolicy (restart-policy.ts) when to start the next
 * one, and reports each recovery; only the supervisor ends the VM.
 */
import { VmConfig } from '../proto';
import { StatePage } from '../contracts/state-page';
import { HangWatch } from './hang-watch';
import { HeldFds } from './spawn';
import type { LogFields, Logger } from '../contracts/log';

export interface RunResult {
  /** tsvmm's exit status (TSVMM_EXIT in contracts/exit-codes.ts). */
  code: number;
  reason: string;
  /** The user asked for it (tsvmm stop, SIGTERM, SIGINT): not an error. */
  requested?: boolean;
  /** The guest ended it (powered off, shut down, halted), as opposed to tsvmm. */
  byGuest?: boolean;
}

/** One recovery of any component. */
export interface Recovery {
  component: string;
  cause: string;
  /** death -> resumed (vmm) / serving again (driver-domain) / ready (priv-domain) / armed (keeper) */
  ms: number;
  warm?: boolean;
}

/** A warm standby took over from the component it stood by for (after a crash or hang, or in tsvmm update). */
export interface Takeover {
  component: string;
  /** The standby's pid: the component's pid from now on. */
  pid: number;
  /** The pid it took over from. */
  fromPid: number;
  /** death (or the update's handover) -> the standby runs the guest / serves the devices */
  ms: number;
  /** 'recovery' or 'update' */
  reason: string;
  /** Unix time (seconds). */
  at: number;
}

/** The fields of a recovery's log record (contracts/log.ts). */
export function recoveryFields(r: Recovery): LogFields {
  return { event: 'recovery', target: r.component, cause: r.cause, warm: r.warm ?? false, ms: Math.round(r.ms * 1000) / 1000 };
}

export interface LifecycleHost {
  readonly cfg: VmConfig;
  readonly held: HeldFds;
  /** The device state page (heartbeats). */
  readonly page: StatePage;
  readonly hangWatch: HangWatch;
  /** tsvmm run --standby: keep warm standbys. */
  readonly standby: boolean;
  /** One line at level info (status, recoveries); `logger` for other levels and fields. */
  log(line: string): void;
  readonly logger: Logger;
  /** A component recovered: recorded, relayed to the priv-domain (`tsvmm ps`, metrics). */
  recovered(r: Recovery): void;
  /** A warm standby took over: recorded (an event in `tsvmm events`) and logged. */
  tookOver(t: Omit<Takeover, 'at'>): void;
  /** The VM ends (guest exit, or nothing left to recover from). */
  finish(r: RunResult): void;
  /** True once the VM has ended: lifecycles start nothing new. */
  readonly finished: boolean;
  /** A vmm runs the guest (booted, restored or taken over). */
  vmmRunning(): void;
  /** A component's pid changed: the run record (contracts/run-record.ts) is rewritten. */
  processesChanged(): void;
}
