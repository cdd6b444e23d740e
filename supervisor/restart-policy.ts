/**
 * The one restart policy every supervised component uses (vmm, driver-domain,
 * priv-domain, keeper, the standbys): when a component fails, restart it at
 * once; when its replacement fails too before it is ready (a failure "in a
 * row"), wait longer each time, up to a ceiling; give up only where a limit
 * is set, and a limit counts failures in a row, never failures over the VM's
 * life (a VM that recovered 1000 times and is healthy again owes nothing).
 *
 * The vmm and the driver-domain never give up: while a valid snapshot exists
 * (or, for the driver-domain, always) the guest can be resumed, so recovery
 * slows down instead. Limits exist for what the guest can do without: a
 * standby (the VM runs on without one), or a vmm that keeps dying while it
 * boots (the guest has not run yet: nothing is lost by saying so).
 */

export interface RestartLimits {
  /** Failures in a row that restart at once (no delay). */
  immediate: number;
  /** Delay of the first delayed restart (ms); doubled for each further failure in a row... */
  firstDelayMs: number;
  /** ...up to this (ms). */
  maxDelayMs: number;
  /** Give up after this many failures in a row (Infinity: never). */
  maxInARow: number;
}

export type RestartDecision = { delayMs: number } | { giveUp: string };

export const RESTART_LIMITS = {
  /** Holds the guest: never gives up while there is something to resume. */
  vmm: { immediate: 2, firstDelayMs: 100, maxDelayMs: 5000, maxInARow: Infinity },
  /** A vmm killed while it boots (before its keeper was armed) boots again from the start. */
  vmmBoot: { immediate: 2, firstDelayMs: 100, maxDelayMs: 2000, maxInARow: 10 },
  /** Holds no state (queue progress is in the state page): always restarted. */
  driverDomain: { immediate: 2, firstDelayMs: 100, maxDelayMs: 5000, maxInARow: Infinity },
  /** The guest never depends on it: always restarted, slower when it keeps dying (a full disk, say). */
  privDomain: { immediate: 3, firstDelayMs: 250, maxDelayMs: 5000, maxInARow: Infinity },
  /** Without one the next vmm death loses the guest: always re-armed. */
  keeper: { immediate: 2, firstDelayMs: 50, maxDelayMs: 2000, maxInARow: Infinity },
  /** A spare: the VM runs on without one. */
  standby: { immediate: 0, firstDelayMs: 200, maxDelayMs: 5000, maxInARow: 5 },
} as const satisfies Record<string, RestartLimits>;

export class RestartPolicy {
  private inARow = 0;
  private total = 0;

  constructor(readonly name: string, private readonly limits: RestartLimits) {}

  /** The component (or a replacement not yet ready) failed: when to restart it, or why not to. */
  failed(cause: string): RestartDecision {
    this.inARow++;
    this.total++;
    const l = this.limits;
    if (this.inARow > l.maxInARow) {
      return { giveUp: `${this.name}: ${this.inARow} failures in a row (last cause: ${cause})` };
    }
    if (this.inARow <= l.immediate) return { delayMs: 0 };
    return { delayMs: Math.min(l.maxDelayMs, l.firstDelayMs * 2 ** (this.inARow - l.immediate - 1)) };
  }

  /** The component is ready (serving, running the guest): the next failure starts over. */
  succeeded(): void { this.inARow = 0; }

  get failuresInARow(): number { return this.inARow; }
  /** Every failure so far. */
  get failures(): number { return this.total; }
}
