/**
 * A 16550A UART (COM1 at 0x3f8, IRQ 4). Its registers live in the platform
 * page (shared memory), so any vCPU thread, and a restarted vmm, sees the
 * same device. Output bytes go to `sink`; interrupts are pulsed on `irq`.
 */
import { PlatformPage, Uart } from '../contracts/platform-page';
import type { PortRule } from '../native/kvm';

export const COM1_BASE = 0x3f8;
export const COM1_IRQ = 4;

const LCR_DLAB = 0x80;
const IER_RDA = 0x01;
const IER_THRE = 0x02;
const LSR_DR = 0x01;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const IIR_NONE = 0x01;
const IIR_THRE = 0x02;
const IIR_RDA = 0x04;
const IIR_FIFO = 0xc0;
const MSR_DEFAULT = 0xb0; // DCD, DSR, CTS

export class Serial {
  constructor(
    private readonly page: PlatformPage,
    private readonly sink: (byte: number) => void,
    private readonly irq: () => void,
    /** The guest wrote IER (vmm/coalesced.ts follows its THR-empty interrupt bit). */
    private readonly ierWritten: () => void = () => undefined,
  ) {}

  /**
   * LSR as a native port rule (native/kvm/fastexit.cc): reading it has no side effect and its value is
   * THR empty | transmitter empty, plus data ready while the page's RX ring is not empty.
   */
  lsrRule(pageAddress: bigint): PortRule {
    return {
      port: COM1_BASE + 5, size: 1, write: false, value: LSR_THRE | LSR_TEMT, flag: LSR_DR,
      a: pageAddress + BigInt(PlatformPage.RX_HEAD_OFFSET), b: pageAddress + BigInt(PlatformPage.RX_TAIL_OFFSET),
    };
  }

  /** The guest asked for the THR-empty interrupt: every THR write must reach the model at once. */
  txInterruptEnabled(): boolean { return (this.page.reg(Uart.IER) & IER_THRE) !== 0; }

  read(offset: number): number {
    const p = this.page;
    const dlab = (p.reg(Uart.LCR) & LCR_DLAB) !== 0;
    switch (offset) {
      case 0:
        if (dlab) return p.reg(Uart.DLL);
        return p.rxPop();
      case 1: return dlab ? p.reg(Uart.DLM) : p.reg(Uart.IER);
      case 2: {
        const fifo = p.reg(Uart.FCR) & 1 ? IIR_FIFO : 0;
        const ier = p.reg(Uart.IER);
        if (ier & IER_RDA && p.rxReady()) return IIR_RDA | fifo;
        if (ier & IER_THRE && p.reg(Uart.THRE_PENDING)) {
          p.reg(Uart.THRE_PENDING, 0); // reading IIR acknowledges THRE
          return IIR_THRE | fifo;
        }
        return IIR_NONE | fifo;
      }
      case 3: return p.reg(Uart.LCR);
      case 4: return p.reg(Uart.MCR);
      case 5: return LSR_THRE | LSR_TEMT | (p.rxReady() ? LSR_DR : 0);
      case 6: return MSR_DEFAULT;
      case 7: return p.reg(Uart.SCR);
      default: return 0xff;
    }
  }

  write(offset: number, value: number): void {
    const p = this.page;
    const dlab = (p.reg(Uart.LCR) & LCR_DLAB) !== 0;
    switch (offset) {
      case 0:
        if (dlab) { p.reg(Uart.DLL, value); return; }
        this.sink(value & 0xff);
        p.reg(Uart.THRE_PENDING, 1);
        break;
      case 1:
        if (dlab) { p.reg(Uart.DLM, value); return; }
        if ((value & IER_THRE) && !(p.reg(Uart.IER) & IER_THRE)) p.reg(Uart.THRE_PENDING, 1);
        p.reg(Uart.IER, value & 0x0f);
        this.ierWritten();
        break;
      case 2: p.reg(Uart.FCR, value); return;
      case 3: p.reg(Uart.LCR, value); return;
      case 4: p.reg(Uart.MCR, value); return;
      case 7: p.reg(Uart.SCR, value); return;
      default: return;
    }
    this.update();
  }

  /** Input arrived (from the terminal): raise RDA if enabled. */
  inputArrived(): void { this.update(); }

  private standingPolls = 0;
  private lastThrePending = -1;

  /**
   * Called every poll by the vmm's main thread. An enabled interrupt condition that stands `polls`
   * calls in a row is raised again, as a 16550's interrupt line stays raised while its condition
   * stands: received data not read, or the THR-empty interrupt enabled with the UART idle (the
   * pending bit unchanged) that long. A driver keeps THRE enabled only while it has more to send
   * (Linux's 8250 driver turns it off when its buffer is empty), so THRE enabled on an idle UART is
   * a driver waiting for an interrupt it did not get: its edge was lost, or the IIR read that took
   * it was answered by a vmm that died before the guest saw the answer (the next vmm replays the
   * read, and the acknowledged THRE reads as "no interrupt"). Both were seen on the emulated host:
   * the shell's prompt left in the driver's buffer, and all console output stopped after a vmm
   * takeover under a 2-vCPU Linux guest. A repeat the guest did not need costs it one interrupt
   * that finds nothing to do.
   */
  repeatStanding(polls: number): void {
    const p = this.page;
    const ier = p.reg(Uart.IER);
    const pending = p.reg(Uart.THRE_PENDING);
    const idle = pending === this.lastThrePending || this.lastThrePending < 0;
    this.lastThrePending = pending;
    const standing = (ier & IER_RDA && p.rxReady()) || (ier & IER_THRE && idle);
    if (!standing) { this.standingPolls = 0; return; }
    if (++this.standingPolls < polls) return;
    this.standingPolls = 0;
    if (ier & IER_THRE) p.reg(Uart.THRE_PENDING, 1);
    this.irq();
  }

  private update(): void {
    const p = this.page;
    const ier = p.reg(Uart.IER);
    if ((ier & IER_RDA && p.rxReady()) || (ier & IER_THRE && p.reg(Uart.THRE_PENDING))) this.irq();
  }
}
