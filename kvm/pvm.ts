/**
 * Detect a software-virtualized KVM. On PVM hosts (/sys/module/kvm_pvm) KVM
 * runs guest CPL0 code through an instruction emulator that lacks
 * instructions an unmodified Linux kernel uses (cmpxchg16b, xrstor, int3):
 * such a kernel cannot boot there (shared/design/kvm-on-these-machines.md).
 * tsvmm refuses to start a Linux guest on such a host instead of hanging.
 *
 * TSVMM_SOFTWARE_KVM overrides the detection (tests, odd hosts): "0" says
 * hardware KVM, any other non-empty value names the software virtualizer.
 */
import * as fs from 'fs';

export const SOFTWARE_KVM_MODULES = ['kvm_pvm'] as const;

/** The name of the software virtualizer behind /dev/kvm (e.g. "PVM"), or undefined for hardware KVM. */
export function detectSoftwareKvm(sysModule = '/sys/module'): string | undefined {
  const forced = process.env.TSVMM_SOFTWARE_KVM;
  if (forced !== undefined && forced !== '') return forced === '0' ? undefined : forced;
  for (const m of SOFTWARE_KVM_MODULES) {
    if (fs.existsSync(`${sysModule}/${m}`)) return m.replace(/^kvm_/, '').toUpperCase();
  }
  return undefined;
}

/** The one line tsvmm prints when asked to boot Linux on a software-virtualized KVM. */
export function softwareKvmRefusal(name: string): string {
  return `this host's KVM is software-virtualized (${name}): an unmodified Linux kernel cannot boot here; use a hardware-KVM host (or --force to try anyway)`;
}
