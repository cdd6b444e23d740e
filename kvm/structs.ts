/**
 * Struct layouts of the KVM ABI, defined once. Sizes and the offsets that
 * have padding rules come from <linux/kvm.h> through the addon (abi());
 * the rest are the plain u64/u32 sequences the header declares.
 */
import { abi } from '../native/kvm';

/** kvm_regs: 18 u64 in this order. */
export const REG_NAMES = [
  'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags',
] as const;
export type RegName = (typeof REG_NAMES)[number];
export type Regs = Record<RegName, bigint>;

export function decodeRegs(b: Buffer): Regs {
  const r = {} as Regs;
  REG_NAMES.forEach((n, i) => { r[n] = b.readBigUInt64LE(i * 8); });
  return r;
}
export function encodeRegs(r: Partial<Regs>, b: Buffer = Buffer.alloc(abi('sizeof_kvm_regs'))): Buffer {
  REG_NAMES.forEach((n, i) => { if (r[n] !== undefined) b.writeBigUInt64LE(BigInt.asUintN(64, r[n]!), i * 8); });
  return b;
}

/** kvm_segment */
export interface Segment {
  base: bigint; limit: number; selector: number; type: number;
  present: number; dpl: number; db: number; s: number; l: number; g: number; avl: number; unusable: number;
}
const SEG_U8 = ['type', 'present', 'dpl', 'db', 's', 'l', 'g', 'avl', 'unusable'] as const;

export function decodeSegment(b: Buffer, at: number): Segment {
  const o = (f: string) => at + abi(`offsetof_kvm_segment_${f}`);
  const seg = { base: b.readBigUInt64LE(o('base')), limit: b.readUInt32LE(o('limit')), selector: b.readUInt16LE(o('selector')) } as Segment;
  for (const f of SEG_U8) seg[f] = b.readUInt8(o(f));
  return seg;
}
export function encodeSegment(b: Buffer, at: number, seg: Segment): void {
  const o = (f: string) => at + abi(`offsetof_kvm_segment_${f}`);
  b.writeBigUInt64LE(seg.base, o('base'));
  b.writeUInt32LE(seg.limit >>> 0, o('limit'));
  b.writeUInt16LE(seg.selector, o('selector'));
  for (const f of SEG_U8) b.writeUInt8(seg[f], o(f));
}

/** kvm_sregs: the fields tsvmm reads or sets (the interrupt bitmap is left as KVM gave it). */
export const SEGMENT_NAMES = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
export type SegmentName = (typeof SEGMENT_NAMES)[number];
export const CONTROL_NAMES = ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apic_base'] as const;
export type ControlName = (typeof CONTROL_NAMES)[number];
export interface DTable { base: bigint; limit: number }
export type Sregs = Record<SegmentName, Segment> & Record<ControlName, bigint> & { gdt: DTable; idt: DTable };

export function decodeSregs(b: Buffer): Sregs {
  const s = {} as Sregs;
  for (const n of SEGMENT_NAMES) s[n] = decodeSegment(b, abi(`offsetof_kvm_sregs_${n}`));
  for (const n of CONTROL_NAMES) s[n] = b.readBigUInt64LE(abi(`offsetof_kvm_sregs_${n}`));
  for (const n of ['gdt', 'idt'] as const) {
    const at = abi(`offsetof_kvm_sregs_${n}`);
    s[n] = { base: b.readBigUInt64LE(at + abi('offsetof_kvm_dtable_base')), limit: b.readUInt16LE(at + abi('offsetof_kvm_dtable_limit')) };
  }
  return s;
}
/** Writes `s` over `b` (a buffer previously filled by KVM_GET_SREGS). */
export function encodeSregs(b: Buffer, s: Partial<Sregs>): Buffer {
  for (const n of SEGMENT_NAMES) if (s[n]) encodeSegment(b, abi(`offsetof_kvm_sregs_${n}`), s[n]!);
  for (const n of CONTROL_NAMES) if (s[n] !== undefined) b.writeBigUInt64LE(s[n]!, abi(`offsetof_kvm_sregs_${n}`));
  for (const n of ['gdt', 'idt'] as const) {
    if (!s[n]) continue;
    const at = abi(`offsetof_kvm_sregs_${n}`);
    b.writeBigUInt64LE(s[n]!.base, at + abi('offsetof_kvm_dtable_base'));
    b.writeUInt16LE(s[n]!.limit, at + abi('offsetof_kvm_dtable_limit'));
  }
  return b;
}

/** kvm_cpuid_entry2 */
export interface CpuidEntry { fn: number; index: number; flags: number; eax: number; ebx: number; ecx: number; edx: number }
const CPUID_HDR = 8;

export function decodeCpuid2(b: Buffer): CpuidEntry[] {
  const n = b.readUInt32LE(0);
  const sz = abi('sizeof_kvm_cpuid_entry2');
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const at = CPUID_HDR + i * sz;
    out.push({
      fn: b.readUInt32LE(at), index: b.readUInt32LE(at + 4), flags: b.readUInt32LE(at + 8),
      eax: b.readUInt32LE(at + 12), ebx: b.readUInt32LE(at + 16), ecx: b.readUInt32LE(at + 20), edx: b.readUInt32LE(at + 24),
    });
  }
  return out;
}
export function encodeCpuid2(entries: CpuidEntry[]): Buffer {
  const sz = abi('sizeof_kvm_cpuid_entry2');
  const b = Buffer.alloc(CPUID_HDR + entries.length * sz);
  b.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => {
    const at = CPUID_HDR + i * sz;
    b.writeUInt32LE(e.fn >>> 0, at); b.writeUInt32LE(e.index >>> 0, at + 4); b.writeUInt32LE(e.flags >>> 0, at + 8);
    b.writeUInt32LE(e.eax >>> 0, at + 12); b.writeUInt32LE(e.ebx >>> 0, at + 16);
    b.writeUInt32LE(e.ecx >>> 0, at + 20); b.writeUInt32LE(e.edx >>> 0, at + 24);
  });
  return b;
}
/** An empty kvm_cpuid2 with room for `n` entries (for GET ioctls). */
export function cpuid2Buffer(n: number): Buffer {
  const b = Buffer.alloc(CPUID_HDR + n * abi('sizeof_kvm_cpuid_entry2'));
  b.writeUInt32LE(n, 0);
  return b;
}

/** kvm_msrs with entries {index, data}. */
export interface MsrEntry { index: number; data: bigint }
export function encodeMsrs(entries: MsrEntry[]): Buffer {
  const b = Buffer.alloc(8 + entries.length * 16);
  b.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => { b.writeUInt32LE(e.index >>> 0, 8 + i * 16); b.writeBigUInt64LE(e.data, 16 + i * 16); });
  return b;
}
export function decodeMsrs(b: Buffer, count: number): MsrEntry[] {
  const out: MsrEntry[] = [];
  for (let i = 0; i < count; i++) out.push({ index: b.readUInt32LE(8 + i * 16), data: b.readBigUInt64LE(16 + i * 16) });
  return out;
}

/** kvm_userspace_memory_region */
export function encodeMemoryRegion(slot: number, gpa: number, size: number, hostAddr: bigint): Buffer {
  const b = Buffer.alloc(abi('sizeof_kvm_userspace_memory_region'));
  b.writeUInt32LE(slot, 0); b.writeUInt32LE(0, 4);
  b.writeBigUInt64LE(BigInt(gpa), 8); b.writeBigUInt64LE(BigInt(size), 16); b.writeBigUInt64LE(hostAddr, 24);
  return b;
}

/** kvm_irqfd */
export function encodeIrqfd(fd: number, gsi: number, flags = 0): Buffer {
  const b = Buffer.alloc(abi('sizeof_kvm_irqfd'));
  b.writeUInt32LE(fd, 0); b.writeUInt32LE(gsi, 4); b.writeUInt32LE(flags, 8);
  return b;
}

/** One GSI route: to an irqchip pin (KVM_IRQ_ROUTING_IRQCHIP) or an MSI (KVM_IRQ_ROUTING_MSI). */
export type IrqRoute =
  | { gsi: number; irqchip: number; pin: number }
  | { gsi: number; msi: { addressLo: number; addressHi: number; data: number } };

/** kvm_irq_routing with its entries (KVM_SET_GSI_ROUTING replaces the whole table). */
export function encodeIrqRouting(routes: IrqRoute[]): Buffer {
  const head = abi('sizeof_kvm_irq_routing');
  const size = abi('sizeof_kvm_irq_routing_entry');
  const u = abi('offsetof_kvm_irq_routing_entry_u');
  const b = Buffer.alloc(head + routes.length * size);
  b.writeUInt32LE(routes.length, 0);
  routes.forEach((r, i) => {
    const at = head + i * size;
    b.writeUInt32LE(r.gsi, at);
    if ('msi' in r) {
      b.writeUInt32LE(abi('KVM_IRQ_ROUTING_MSI'), at + 4);
      b.writeUInt32LE(r.msi.addressLo, at + u);
      b.writeUInt32LE(r.msi.addressHi, at + u + 4);
      b.writeUInt32LE(r.msi.data, at + u + 8);
    } else {
      b.writeUInt32LE(abi('KVM_IRQ_ROUTING_IRQCHIP'), at + 4);
      b.writeUInt32LE(r.irqchip, at + u);
      b.writeUInt32LE(r.pin, at + u + 4);
    }
  });
  return b;
}

/** Byte offset of IOAPIC redirection table entry `pin` (a 64-bit register) in a KVM_GET_IRQCHIP(KVM_IRQCHIP_IOAPIC) buffer. */
export function ioapicRedirectionOffset(pin: number): number {
  return abi('offsetof_kvm_irqchip_chip') + abi('offsetof_kvm_ioapic_state_redirtbl') + 8 * pin;
}

/** kvm_ioeventfd */
export function encodeIoeventfd(o: { addr: number; len: number; fd: number; datamatch?: number; pio?: boolean; deassign?: boolean }): Buffer {
  const b = Buffer.alloc(abi('sizeof_kvm_ioeventfd'));
  let flags = 0;
  if (o.datamatch !== undefined) flags |= abi('KVM_IOEVENTFD_FLAG_DATAMATCH');
  if (o.pio) flags |= abi('KVM_IOEVENTFD_FLAG_PIO');
  if (o.deassign) flags |= abi('KVM_IOEVENTFD_FLAG_DEASSIGN');
  b.writeBigUInt64LE(BigInt(o.datamatch ?? 0), 0); b.writeBigUInt64LE(BigInt(o.addr), 8);
  b.writeUInt32LE(o.len, 16); b.writeInt32LE(o.fd, 20); b.writeUInt32LE(flags, 24);
  return b;
}

/** kvm_irq_level */
export function encodeIrqLevel(irq: number, level: number): Buffer {
  const b = Buffer.alloc(abi('sizeof_kvm_irq_level'));
  b.writeUInt32LE(irq, 0); b.writeUInt32LE(level, 4);
  return b;
}
