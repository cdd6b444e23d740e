/**
 * The platform page: the vmm's device registers (16550 UART, serial input
 * ring) in shared memory, first page of the state memfd the supervisor
 * holds. A restarted vmm rebuilds its UART from here instead of the JS heap.
 *
 * Layout v1 (all little-endian u32 slots, index = byte offset / 4):
 *   0 magic 'TSPL'   1 version   2..9 UART registers (ier lcr mcr scr dll dlm fcr thre_pending)
 *   16 rx_head  17 rx_tail   (ring of RX_SIZE bytes at byte offset RX_DATA)
 *   18 rx_lock: pid of the producer pushing input (0 = none). Input has two producers, the
 *      `tsvmm run` terminal (the vmm's stdin) and `tsvmm console` (through the priv-domain's
 *      API); the lock keeps their pushes whole. A holder that died is detected and replaced.
 *   20 ged_events: the ACPI Generic Event Device's pending events (contracts/layout.ts
 *      ACPI_GED_*): the supervisor sets bits (tsvmm stop: the power button), the guest reads them
 *      and clears them by writing 1s (vmm/ged.ts)
 *   21 ged_raises: how many times the supervisor asked for the GED's interrupt; the vmm raises it
 *      when this moves (slots 20-21 were zero and unused before: a page from an older build reads
 *      as no events)
 *   32 guest exit code + 1 (0 = still running)
 */
export const PLATFORM_MAGIC = 0x4c505354; // 'TSPL'
export const PLATFORM_VERSION = 1;
export const PLATFORM_PAGE_SIZE = 4096;
export const RX_DATA = 1024;
export const RX_SIZE = 2048;

export const enum Uart {
  IER = 2, LCR, MCR, SCR, DLL, DLM, FCR, THRE_PENDING,
}
const RX_HEAD = 16;
const RX_TAIL = 17;
const RX_LOCK = 18;
const GED_EVENTS = 20;
const GED_RAISES = 21;

export class PlatformPage {
  readonly u32: Int32Array;
  readonly bytes: Uint8Array;

  constructor(buf: ArrayBuffer, offset = 0) {
    this.u32 = new Int32Array(buf, offset, PLATFORM_PAGE_SIZE / 4);
    this.bytes = new Uint8Array(buf, offset, PLATFORM_PAGE_SIZE);
  }

  /** Formats a fresh page (supervisor, at VM creation). */
  init(): void {
    this.bytes.fill(0);
    this.reg(Uart.LCR, 0x03);
    Atomics.store(this.u32, 1, PLATFORM_VERSION);
    Atomics.store(this.u32, 0, PLATFORM_MAGIC);
  }

  /** Throws (one line, naming both versions) unless the page is a platform page of the layout this build reads. */
  check(): void {
    if (Atomics.load(this.u32, 0) !== PLATFORM_MAGIC) throw new Error('platform state page has a bad magic');
    const v = Atomics.load(this.u32, 1);
    if (v !== PLATFORM_VERSION) throw new Error(`the platform page has layout version ${v}; this build reads version ${PLATFORM_VERSION}`);
  }

  reg(r: Uart, value?: number): number {
    if (value !== undefined) Atomics.store(this.u32, r, value & 0xff);
    return Atomics.load(this.u32, r);
  }

  /** Serial input: the producer side (vmm stdin, priv-domain console input). Returns bytes queued. */
  rxPush(data: Uint8Array): number {
    const me = process.pid;
    for (let i = 0; ; i++) {
      const holder = Atomics.compareExchange(this.u32, RX_LOCK, 0, me);
      if (holder === 0 || holder === me) break;
      if (i >= 10000 && !pidAlive(holder)) { Atomics.compareExchange(this.u32, RX_LOCK, holder, 0); i = 0; }
    }
    try {
      return this.rxPushLocked(data);
    } finally {
      Atomics.store(this.u32, RX_LOCK, 0);
    }
  }

  /** The GED's pending events (contracts/layout.ts ACPI_GED_*). */
  gedEvents(): number { return Atomics.load(this.u32, GED_EVENTS) >>> 0; }

  /** The guest acknowledged `bits` (written 1s clear them). */
  gedAck(bits: number): void { Atomics.and(this.u32, GED_EVENTS, ~bits); }

  /** Sets event `bits` and asks the vmm to raise the GED's interrupt (supervisor: tsvmm stop). */
  gedRaise(bits: number): void {
    Atomics.or(this.u32, GED_EVENTS, bits);
    Atomics.add(this.u32, GED_RAISES, 1);
  }

  /** Moves each time gedRaise is called (the vmm raises the interrupt when it does). */
  gedRaises(): number { return Atomics.load(this.u32, GED_RAISES); }

  /** How far producers have written (changes whenever input arrives). */
  rxHead(): number { return Atomics.load(this.u32, RX_HEAD); }

  private rxPushLocked(data: Uint8Array): number {
    let n = 0;
    for (const b of data) {
      const head = Atomics.load(this.u32, RX_HEAD);
      const tail = Atomics.load(this.u32, RX_TAIL);
      if (((head + 1) % RX_SIZE) === tail) break; // full
      this.bytes[RX_DATA + head] = b;
      Atomics.store(this.u32, RX_HEAD, (head + 1) % RX_SIZE);
      n++;
    }
    return n;
  }
  rxReady(): boolean { return Atomics.load(this.u32, RX_HEAD) !== Atomics.load(this.u32, RX_TAIL); }
  /** Byte offsets of the RX ring's head and tail words: "input ready" is head != tail (vmm/platform.ts fixedPorts). */
  static readonly RX_HEAD_OFFSET = RX_HEAD * 4;
  static readonly RX_TAIL_OFFSET = RX_TAIL * 4;
  rxPop(): number {
    const tail = Atomics.load(this.u32, RX_TAIL);
    if (tail === Atomics.load(this.u32, RX_HEAD)) return 0;
    const b = this.bytes[RX_DATA + tail];
    Atomics.store(this.u32, RX_TAIL, (tail + 1) % RX_SIZE);
    return b;
  }
}

function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}
