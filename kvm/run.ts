/**
 * Reading a vCPU's kvm_run page after KVM_RUN returns. Offsets come from
 * <linux/kvm.h> via the addon and are resolved once, so the hot loop only
 * does DataView reads.
 */
import { abi } from '../native/kvm';

export const EXIT = {
  UNKNOWN: abi('KVM_EXIT_UNKNOWN'), EXCEPTION: abi('KVM_EXIT_EXCEPTION'), IO: abi('KVM_EXIT_IO'),
  HYPERCALL: abi('KVM_EXIT_HYPERCALL'), DEBUG: abi('KVM_EXIT_DEBUG'), HLT: abi('KVM_EXIT_HLT'),
  MMIO: abi('KVM_EXIT_MMIO'), IRQ_WINDOW_OPEN: abi('KVM_EXIT_IRQ_WINDOW_OPEN'), SHUTDOWN: abi('KVM_EXIT_SHUTDOWN'),
  FAIL_ENTRY: abi('KVM_EXIT_FAIL_ENTRY'), INTR: abi('KVM_EXIT_INTR'), INTERNAL_ERROR: abi('KVM_EXIT_INTERNAL_ERROR'),
  SYSTEM_EVENT: abi('KVM_EXIT_SYSTEM_EVENT'),
} as const;

/** Exit reason number -> lower-case name (for metrics and errors). */
export const EXIT_NAME: Record<number, string> = Object.fromEntries(
  Object.entries(EXIT).map(([k, v]) => [v, k.toLowerCase()]),
);

export const RUN = {
  immediateExit: abi('offsetof_kvm_run_immediate_exit'),
  exitReason: abi('offsetof_kvm_run_exit_reason'),
  ioDirection: abi('offsetof_kvm_run_io_direction'),
  ioSize: abi('offsetof_kvm_run_io_size'),
  ioPort: abi('offsetof_kvm_run_io_port'),
  ioCount: abi('offsetof_kvm_run_io_count'),
  ioDataOffset: abi('offsetof_kvm_run_io_data_offset'),
  mmioPhysAddr: abi('offsetof_kvm_run_mmio_phys_addr'),
  mmioData: abi('offsetof_kvm_run_mmio_data'),
  mmioLen: abi('offsetof_kvm_run_mmio_len'),
  mmioIsWrite: abi('offsetof_kvm_run_mmio_is_write'),
  failEntryReason: abi('offsetof_kvm_run_fail_entry_reason'),
  internalSuberror: abi('offsetof_kvm_run_internal_suberror'),
  internalNdata: abi('offsetof_kvm_run_internal_ndata'),
  internalData: abi('offsetof_kvm_run_internal_data'),
  systemEventType: abi('offsetof_kvm_run_system_event_type'),
  IO_IN: abi('KVM_EXIT_IO_IN'),
} as const;

export const INTERNAL_SUBERROR: Record<number, string> = {
  [abi('KVM_INTERNAL_ERROR_EMULATION')]: 'emulation failure',
  [abi('KVM_INTERNAL_ERROR_SIMUL_EX')]: 'simultaneous exceptions',
  [abi('KVM_INTERNAL_ERROR_DELIVERY_EV')]: 'event delivery failed',
};

export const SYSTEM_EVENT = {
  SHUTDOWN: abi('KVM_SYSTEM_EVENT_SHUTDOWN'), RESET: abi('KVM_SYSTEM_EVENT_RESET'), CRASH: abi('KVM_SYSTEM_EVENT_CRASH'),
} as const;
