/**
 * Reading a Linux guest's kernel log for trouble: WARNING, BUG, Oops, Call
 * Trace, soft lockups, RCU stalls, an unstable clocksource, ACPI errors, and
 * the taint it leaves. One warning is exempted, and only on the emulated
 * host (emulated-host/host.ts): QEMU TCG's SVM does not implement the XSETBV
 * intercept, so the guest's XSETBV never reaches kvm-amd, and CPUID leaf 0xD
 * EBX (the XSAVE area size for the enabled features, which KVM updates on an
 * intercepted XSETBV) keeps its reset value. Linux then prints "XSAVE
 * consistency problem" and a WARNING in fpu__init_system_xstate
 * (arch/x86/kernel/fpu/xstate.c) on every boot. The same kernel under QEMU
 * with -enable-kvm inside that emulated host warns the same way, so it is the
 * emulator's, not tsvmm's (docs/emulated-host.md). Everything else counts.
 */

/** What the guest prints for the log check: `dmesg` filtered down to these. */
export const TROUBLE = /WARNING|BUG|Oops|Call Trace|cut here|end trace|XSAVE consistency|soft lockup|hard LOCKUP|rcu.*stall|clocksource.*unstable|Marking clocksource|ACPI (BIOS )?Error|ACPI Error|ACPI Exception|Kernel panic|general protection|segfault|hung_task|blocked for more than/i;

/** The grep -E pattern the guest runs (same words as TROUBLE). */
export const TROUBLE_GREP = 'WARNING|BUG|Oops|Call Trace|cut here|end trace|XSAVE consistency|soft lockup|hard LOCKUP|stall|unstable|Marking clocksource|ACPI.*(Error|Exception)|Kernel panic|general protection|segfault|hung_task|blocked for more than';

/** TAINT_WARN: set by any WARN(). */
export const TAINT_WARN = 1 << 9;

export interface LogVerdict {
  /** Lines that fail the check. */
  problems: string[];
  /** Exempted warnings (the emulator's XSAVE one), by count. */
  exempted: number;
}

/**
 * Judge `lines` (the guest's filtered kernel log) and its `taint`
 * (/proc/sys/kernel/tainted). `emulated`: apply the emulated host's exemption.
 */
export function judgeKernelLog(lines: readonly string[], taint: number, emulated: boolean): LogVerdict {
  const problems: string[] = [];
  let exempted = 0;
  const strip = (l: string): string => l.replace(/^\s*\[\s*[\d.]+\]\s*/, '').replace(/^(x86\/fpu: )/, '').trim();
  // The command line (it may name rcu_cpu_stall_timeout) and RCU's own report of that setting are not trouble.
  const benign = /command line:|RCU CPU stall warnings timeout set to/i;
  const trouble = lines.filter((l) => TROUBLE.test(strip(l)) && !benign.test(l));
  const isXsave = (l: string): boolean => /^XSAVE consistency problem: size \d+ != kernel_size \d+/.test(strip(l));
  const isXsaveWarn = (l: string): boolean => /^WARNING: CPU: \d+ PID: \d+ at arch\/x86\/kernel\/fpu\/xstate\.c:\d+ fpu__init_system_xstate/.test(strip(l));
  for (let i = 0; i < trouble.length; i++) {
    // The exempted block, in the order WARN_ONCE prints it: cut here, the message, WARNING, Call Trace, end trace.
    if (emulated) {
      let j = i;
      if (/cut here/.test(trouble[j])) j++;
      if (j < trouble.length && isXsave(trouble[j]) && j + 1 < trouble.length && isXsaveWarn(trouble[j + 1])) {
        j += 2;
        if (j < trouble.length && /Call Trace:/.test(trouble[j])) j++;
        if (j < trouble.length && /---\[ end trace/.test(trouble[j])) j++;
        exempted++;
        i = j - 1;
        continue;
      }
    }
    problems.push(trouble[i]);
  }
  const allowed = exempted > 0 ? TAINT_WARN : 0;
  if ((taint & ~allowed) !== 0) problems.push(`kernel tainted: ${taint} (allowed here: ${allowed})`);
  return { problems, exempted };
}
