/**
 * vmm/irq-routes: a device's irqfd GSI follows the guest's IOAPIC programming
 * of its pin (the MSI that pin sends while it is unmasked and edge-triggered,
 * the pin itself otherwise), and an interrupt signalled on the irqfd reaches
 * the vCPU's LAPIC with the vector the guest chose, by either route.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import { abi, native } from '../native/kvm';
import { Kvm } from '../kvm/system';
import { Vm } from '../kvm/vm';
import { Vcpu } from '../kvm/vcpu';
import { ioapicRedirectionOffset } from '../kvm/structs';
import { DeviceEntry } from '../contracts/device-list';
import { irqfdGsi, IrqRoutes, msiFor } from '../vmm/irq-routes';
import { requireKvm } from './helpers/tsvmm';

const entry = (o: { vector: number; delivery?: number; logical?: boolean; level?: boolean; masked?: boolean; dest?: number }): bigint =>
  BigInt(o.vector) | (BigInt(o.delivery ?? 0) << 8n) | (o.logical ? 1n << 11n : 0n) | (o.level ? 1n << 15n : 0n) |
  (o.masked ? 1n << 16n : 0n) | (BigInt(o.dest ?? 0) << 56n);

describe('interrupt routes of the virtio irqfds', () => {
  it('an unmasked, edge-triggered fixed or lowest-priority pin becomes the MSI the IOAPIC would send', () => {
    assert.deepEqual(msiFor(entry({ vector: 0x55 })), { addressLo: 0xfee00000, addressHi: 0, data: 0x55 });
    assert.deepEqual(msiFor(entry({ vector: 0x61, delivery: 1, logical: true, dest: 3 })), { addressLo: 0xfee03004, addressHi: 0, data: 0x161 });
  });

  it('a masked, level-triggered, NMI/INIT/ExtINT or reserved-vector pin stays on the IOAPIC', () => {
    assert.equal(msiFor(entry({ vector: 0x55, masked: true })), undefined);
    assert.equal(msiFor(entry({ vector: 0x55, level: true })), undefined);
    for (const delivery of [2, 4, 5, 7]) assert.equal(msiFor(entry({ vector: 0x55, delivery })), undefined);
    assert.equal(msiFor(entry({ vector: 3 })), undefined);
  });

  describe('on a real VM', function () {
    before(requireKvm);

    const PIN = 5;
    const VECTOR = 0x55;
    const device: DeviceEntry = { index: 0, kind: 'blk', queues: 1, base: 0xd0000000, gsi: PIN };

    /** A VM with one vCPU whose LAPIC accepts interrupts, the routes, and an irqfd on the device's GSI. */
    function setup(): { vm: Vm; vcpu: Vcpu; routes: IrqRoutes; efd: number } {
      const kvm = Kvm.open();
      const vm = new Vm(kvm.createVm());
      vm.createIrqchip();
      const vcpu = new Vcpu(vm.createVcpu(0), 0, kvm.vcpuMmapSize());
      const lapic = vcpu.getBlob('LAPIC');
      lapic.writeUInt32LE(0x1ff, 0xf0); // SVR: software-enabled
      vcpu.setBlob('LAPIC', lapic);
      const routes = new IrqRoutes(vm, [device]);
      const efd = native.eventfd(0, true);
      vm.irqfd(efd, irqfdGsi(device));
      return { vm, vcpu, routes, efd };
    }

    /** Sets the guest's IOAPIC redirection entry for PIN. */
    function program(vm: Vm, e: bigint): void {
      const chip = vm.getIrqchip(abi('KVM_IRQCHIP_IOAPIC'));
      chip.writeBigUInt64LE(e, ioapicRedirectionOffset(PIN));
      vm.setIrqchip(chip);
      assert.equal(vm.getIrqchip(abi('KVM_IRQCHIP_IOAPIC')).readBigUInt64LE(ioapicRedirectionOffset(PIN)), e);
    }

    /** Signals the irqfd and waits (briefly: the IOAPIC route injects from a kernel worker) for VECTOR in the LAPIC's IRR. */
    function delivered(vcpu: Vcpu, efd: number): boolean {
      const irr = () => (vcpu.getBlob('LAPIC').readUInt32LE(0x200 + 0x10 * (VECTOR >> 5)) >>> (VECTOR & 31)) & 1;
      const lapic = vcpu.getBlob('LAPIC');
      lapic.writeUInt32LE(0, 0x200 + 0x10 * (VECTOR >> 5)); // clear IRR
      vcpu.setBlob('LAPIC', lapic);
      const one = Buffer.alloc(8);
      one.writeBigUInt64LE(1n);
      fs.writeSync(efd, one);
      const until = Date.now() + 1000;
      while (Date.now() < until) if (irr()) return true;
      return false;
    }

    it('switches the route when the guest programs, re-programs and masks the pin, and delivers the vector by both', () => {
      const { vm, vcpu, routes, efd } = setup();
      try {
        routes.sync();
        assert.equal(routes.changes, 0, 'a masked pin (after reset) stays routed to the IOAPIC');

        program(vm, entry({ vector: VECTOR }));
        assert.ok(delivered(vcpu, efd), 'through the IOAPIC pin');
        routes.sync();
        assert.equal(routes.changes, 1, 'routed to the MSI once the pin is programmed');
        routes.sync();
        assert.equal(routes.changes, 1, 'an unchanged pin changes nothing');
        assert.ok(delivered(vcpu, efd), 'through the MSI route');

        program(vm, entry({ vector: VECTOR, dest: 1 }));
        routes.sync();
        assert.equal(routes.changes, 2, 'another destination is another MSI');

        program(vm, entry({ vector: VECTOR, masked: true }));
        routes.sync();
        assert.equal(routes.changes, 3, 'a masked pin goes back to the IOAPIC');
        assert.equal(delivered(vcpu, efd), false, 'a masked pin delivers nothing');
      } finally {
        fs.closeSync(efd);
      }
    });
  });
});
