/**
 * The 16550A model (vmm/serial.ts) on its own: the interrupt conditions and
 * the repeat of one the guest did not take (repeatStanding).
 */
import { strict as assert } from 'assert';
import { PLATFORM_PAGE_SIZE, PlatformPage } from '../contracts/platform-page';
import { COM1_BASE, Serial } from '../vmm/serial';

const IER = 1;
const IIR = 2;
const IER_RDA = 1;
const IER_THRE = 2;

function uart(): { serial: Serial; page: PlatformPage; irqs: () => number; out: number[] } {
  const page = new PlatformPage(new ArrayBuffer(PLATFORM_PAGE_SIZE));
  page.init();
  let n = 0;
  const out: number[] = [];
  return { serial: new Serial(page, (b) => out.push(b), () => { n++; }), page, irqs: () => n, out };
}

describe('serial (16550A model)', () => {
  it('raises THRE when the guest enables it and after each byte; reading IIR takes it', () => {
    const { serial, irqs, out } = uart();
    serial.write(IER, IER_THRE);
    assert.equal(irqs(), 1);
    assert.equal(serial.read(IIR) & 0x0f, 0x02, 'THRE');
    assert.equal(serial.read(IIR) & 0x0f, 0x01, 'taken: no interrupt');
    serial.write(0, 0x41);
    assert.deepEqual(out, [0x41]);
    assert.equal(irqs(), 2);
    void COM1_BASE;
  });

  it('raises THRE again while it stays enabled on an idle UART (a lost edge, or a lost answer to the IIR read that took it), and nothing once it is disabled', () => {
    const { serial, irqs } = uart();
    serial.write(IER, IER_THRE); // pulse 1, its edge lost by the guest
    for (let i = 0; i < 49; i++) serial.repeatStanding(50);
    assert.equal(irqs(), 1, 'not before 50 polls');
    serial.repeatStanding(50);
    assert.equal(irqs(), 2, 'raised again at the 50th');
    serial.read(IIR); // taken, but say the answer was lost with the vmm: the driver still waits
    serial.repeatStanding(50); // the poll that sees the read (the pending bit moved)
    for (let i = 0; i < 49; i++) serial.repeatStanding(50);
    assert.equal(irqs(), 2, 'not before 50 idle polls');
    serial.repeatStanding(50);
    assert.equal(irqs(), 3, 'raised again while THRE stays enabled on an idle UART');
    assert.equal(serial.read(IIR) & 0x0f, 0x02, 'and the IIR says THRE again');
    // Sending: the pending bit moves between polls, so nothing is repeated.
    for (let i = 0; i < 200; i++) { serial.write(0, 0x41); serial.repeatStanding(50); serial.read(IIR); serial.repeatStanding(50); }
    assert.equal(irqs(), 3 + 200, 'one interrupt per byte sent, no repeats');
    serial.write(IER, 0); // the driver has nothing more to send
    for (let i = 0; i < 200; i++) serial.repeatStanding(50);
    assert.equal(irqs(), 203, 'THRE disabled: nothing');
  });

  it('repeats received data the guest has not read while RDA is enabled, not while it is disabled', () => {
    const { serial, page, irqs } = uart();
    page.rxPush(Buffer.from('x'));
    for (let i = 0; i < 100; i++) serial.repeatStanding(50);
    assert.equal(irqs(), 0, 'RDA disabled: nothing');
    serial.write(IER, IER_RDA);
    for (let i = 0; i < 50; i++) serial.repeatStanding(50);
    assert.ok(irqs() >= 1);
    assert.equal(serial.read(0), 'x'.charCodeAt(0));
    const before = irqs();
    for (let i = 0; i < 200; i++) serial.repeatStanding(50);
    assert.equal(irqs(), before, 'read: nothing stands');
  });
});
