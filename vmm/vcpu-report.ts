/** A one-line summary of a vCPU's registers, for fatal-exit errors. */
import { Vcpu } from '../kvm/vcpu';

const hex = (v: bigint) => '0x' + v.toString(16);

export function describeVcpu(vcpu: Vcpu): string {
  try {
    const r = vcpu.getRegs();
    const s = vcpu.getSregs();
    return `rip=${hex(r.rip)} rsp=${hex(r.rsp)} rflags=${hex(r.rflags)} rax=${hex(r.rax)} rbx=${hex(r.rbx)} ` +
      `cs=${hex(BigInt(s.cs.selector))} cr0=${hex(s.cr0)} cr2=${hex(s.cr2)} cr3=${hex(s.cr3)} cr4=${hex(s.cr4)} efer=${hex(s.efer)}`;
  } catch (e) {
    return `(registers unavailable: ${(e as Error).message})`;
  }
}
