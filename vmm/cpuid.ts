/**
 * Per-vCPU CPUID, derived from KVM_GET_SUPPORTED_CPUID: the APIC id in
 * leaves 1/0xB/0x1F, the hypervisor bit, the KVM signature leaves and the
 * TSC/bus frequency leaf 0x40000010 (so guests need not calibrate).
 *
 * For Linux guests: leaf 0x40000000 says "KVMKVMKVM" (Linux's kvm_para
 * detection), and leaf 0x40000001 (KVM_CPUID_FEATURES) is passed through
 * unchanged from KVM_GET_SUPPORTED_CPUID, so KVM_FEATURE_CLOCKSOURCE2,
 * CLOCKSOURCE_STABLE_BIT, ASYNC_PF, PV_EOI, STEAL_TIME, PV_UNHALT ... reach
 * the guest exactly as this host's KVM supports them. No MSRs are set by the
 * vmm for this: a Linux guest enables kvmclock itself by writing
 * MSR_KVM_SYSTEM_TIME_NEW (0x4b564d01) and MSR_KVM_WALL_CLOCK_NEW
 * (0x4b564d00), which KVM handles in the kernel; the snapshot/restore MSR
 * list (vmm/restore.ts) comes from KVM_GET_MSR_INDEX_LIST and so carries them.
 */
import { CpuidEntry } from '../kvm/structs';

export const KVM_SIGNATURE = 'KVMKVMKVM\0\0\0';
export const KVM_CPUID_SIGNATURE = 0x40000000;
export const KVM_CPUID_FEATURES = 0x40000001;
/** Bits of leaf 0x40000001 EAX (Documentation/virt/kvm/x86/cpuid.rst). */
export const KVM_FEATURE_CLOCKSOURCE = 0;
export const KVM_FEATURE_CLOCKSOURCE2 = 3;
export const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT = 24;
export const CPUID_TIMING_LEAF = 0x40000010;
/** KVM's LAPIC timer runs at 1 GHz (APIC_BUS_CYCLE_NS = 1). */
const APIC_BUS_KHZ = 1_000_000;

function sig(s: string, i: number): number {
  return Buffer.from(s, 'latin1').readUInt32LE(i * 4);
}

export function vcpuCpuid(supported: CpuidEntry[], apicId: number, cpus: number, tscKhz: number): CpuidEntry[] {
  const out = supported
    .filter((e) => e.fn !== CPUID_TIMING_LEAF)
    .map((e) => ({ ...e }));
  for (const e of out) {
    switch (e.fn) {
      case 1:
        // APIC id, logical processor count, hypervisor bit.
        e.ebx = ((e.ebx & 0x0000ffff) | ((Math.min(cpus, 255) & 0xff) << 16) | ((apicId & 0xff) << 24)) >>> 0;
        e.ecx = (e.ecx | (1 << 31)) >>> 0;
        if (cpus > 1) e.edx = (e.edx | (1 << 28)) >>> 0; // HTT: the count in ebx is valid
        break;
      case 0xb:
      case 0x1f:
        // x2APIC topology: one thread per core; edx = x2APIC id.
        e.edx = apicId >>> 0;
        if (e.index === 0) { e.eax = 0; e.ebx = 1; e.ecx = (1 << 8) | 0; }
        else if (e.index === 1) { e.eax = Math.ceil(Math.log2(Math.max(cpus, 1))); e.ebx = cpus; e.ecx = (2 << 8) | 1; }
        else { e.eax = 0; e.ebx = 0; e.ecx = e.index; }
        break;
      case 0x40000000:
        e.eax = Math.max(e.eax, CPUID_TIMING_LEAF);
        e.ebx = sig(KVM_SIGNATURE, 0); e.ecx = sig(KVM_SIGNATURE, 1); e.edx = sig(KVM_SIGNATURE, 2);
        break;
    }
  }
  if (!out.some((e) => e.fn === 0x40000000)) {
    out.push({ fn: 0x40000000, index: 0, flags: 0, eax: CPUID_TIMING_LEAF, ebx: sig(KVM_SIGNATURE, 0), ecx: sig(KVM_SIGNATURE, 1), edx: sig(KVM_SIGNATURE, 2) });
  }
  out.push({ fn: CPUID_TIMING_LEAF, index: 0, flags: 0, eax: tscKhz >>> 0, ebx: APIC_BUS_KHZ, ecx: 0, edx: 0 });
  return out;
}
