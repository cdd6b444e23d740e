/**
 * A hardware-reduced Fixed ACPI Description Table (ACPI 6.x, 5.2.9), revision 6:
 * no PM timer, no PM1/GPE blocks, no SCI; just the DSDT pointer, the
 * HW_REDUCED_ACPI flag and the IA-PC boot flags that tell the OS there is no
 * VGA, no 8042 and no MSI. Optional reset and sleep registers in I/O space.
 *
 * Offsets used (the table is 276 bytes):
 *   40 DSDT u32, 45 Preferred_PM_Profile u8, 109 IAPC_BOOT_ARCH u16, 112 Flags u32,
 *   116 RESET_REG GAS, 128 RESET_VALUE u8, 131 FADT Minor Version u8, 140 X_DSDT u64,
 *   244 SLEEP_CONTROL_REG GAS, 256 SLEEP_STATUS_REG GAS, 268 Hypervisor Vendor Identity u64
 */
import { encodeSdt, SDT_HEADER_SIZE } from './sdt';

export const FADT_SIZE = 276;
export const FADT_REVISION = 6;
export const FADT_MINOR_REVISION = 3;

export const FADT = {
  dsdt: 40, preferredPmProfile: 45, iapcBootArch: 109, flags: 112, resetReg: 116, resetValue: 128,
  minorVersion: 131, xDsdt: 140, sleepControlReg: 244, sleepStatusReg: 256, hypervisorVendor: 268,
} as const;

export const FADT_F_RESET_REG_SUP = 1 << 10;
export const FADT_F_HW_REDUCED_ACPI = 1 << 20;
export const IAPC_BOOT_VGA_NOT_PRESENT = 1 << 2;
export const IAPC_BOOT_MSI_NOT_SUPPORTED = 1 << 3;

export interface FadtOptions {
  dsdt: number;
  /** An I/O port the OS writes `value` to to reset the machine. */
  reset?: { port: number; value: number };
  /** I/O ports of the hardware-reduced sleep control / status registers (one byte each). */
  sleep?: { controlPort: number; statusPort: number };
}

/** Write a Generic Address Structure for one byte of system I/O space at `off`. */
function ioGas(t: Buffer, off: number, port: number): void {
  t.writeUInt8(1, off);       // Address Space ID: System I/O
  t.writeUInt8(8, off + 1);   // Register Bit Width
  t.writeUInt8(0, off + 2);   // Register Bit Offset
  t.writeUInt8(1, off + 3);   // Access Size: byte
  t.writeBigUInt64LE(BigInt(port), off + 4);
}

export function encodeFadt(o: FadtOptions): Buffer {
  const t = Buffer.alloc(FADT_SIZE);
  let flags = FADT_F_HW_REDUCED_ACPI;
  t.writeUInt32LE(o.dsdt, FADT.dsdt);
  t.writeBigUInt64LE(BigInt(o.dsdt), FADT.xDsdt);
  t.writeUInt8(0, FADT.preferredPmProfile); // unspecified
  t.writeUInt16LE(IAPC_BOOT_VGA_NOT_PRESENT | IAPC_BOOT_MSI_NOT_SUPPORTED, FADT.iapcBootArch);
  if (o.reset) {
    ioGas(t, FADT.resetReg, o.reset.port);
    t.writeUInt8(o.reset.value, FADT.resetValue);
    flags |= FADT_F_RESET_REG_SUP;
  }
  if (o.sleep) {
    ioGas(t, FADT.sleepControlReg, o.sleep.controlPort);
    ioGas(t, FADT.sleepStatusReg, o.sleep.statusPort);
  }
  t.writeUInt32LE(flags, FADT.flags);
  t.writeUInt8(FADT_MINOR_REVISION, FADT.minorVersion);
  return encodeSdt('FACP', FADT_REVISION, t.subarray(SDT_HEADER_SIZE));
}
