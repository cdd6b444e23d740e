// abi.c: the KVM ABI table, compiled as C on purpose: g++ computes different
// sizes for kernel structs with flexible array members (kvm_cpuid2 comes out
// 12 bytes instead of 8), which corrupts the _IOC-encoded ioctl numbers.
// constants.cc turns this table into the addon's `constants` object.
#include <stddef.h>
#include <linux/kvm.h>
#include <linux/if_tun.h>
#include "constants.h"

const struct tsvmm_const tsvmm_constants[] = {
#define K(name) {#name, (double)(name)},
#define SIZE(type) {"sizeof_" #type, (double)sizeof(struct type)},
#define OFF(type, field, key) {"offsetof_" #type "_" key, (double)offsetof(struct type, field)},
  // system ioctls
  K(KVM_GET_API_VERSION) K(KVM_CREATE_VM) K(KVM_CHECK_EXTENSION) K(KVM_GET_VCPU_MMAP_SIZE)
  K(KVM_GET_SUPPORTED_CPUID) K(KVM_GET_MSR_INDEX_LIST)
  // vm ioctls
  K(KVM_CREATE_VCPU) K(KVM_SET_USER_MEMORY_REGION) K(KVM_SET_TSS_ADDR) K(KVM_SET_IDENTITY_MAP_ADDR)
  K(KVM_CREATE_IRQCHIP) K(KVM_IRQ_LINE) K(KVM_GET_IRQCHIP) K(KVM_SET_IRQCHIP) K(KVM_CREATE_PIT2)
  K(KVM_GET_PIT2) K(KVM_SET_PIT2) K(KVM_GET_CLOCK) K(KVM_SET_CLOCK) K(KVM_IRQFD) K(KVM_IOEVENTFD)
  K(KVM_ENABLE_CAP) K(KVM_SET_GSI_ROUTING)
  K(KVM_REGISTER_COALESCED_MMIO) K(KVM_UNREGISTER_COALESCED_MMIO) K(KVM_COALESCED_MMIO_PAGE_OFFSET)
  // vcpu ioctls
  K(KVM_RUN) K(KVM_GET_REGS) K(KVM_SET_REGS) K(KVM_GET_SREGS) K(KVM_SET_SREGS)
  K(KVM_GET_FPU) K(KVM_SET_FPU) K(KVM_GET_XSAVE) K(KVM_SET_XSAVE) K(KVM_GET_XCRS) K(KVM_SET_XCRS)
  K(KVM_GET_DEBUGREGS) K(KVM_SET_DEBUGREGS) K(KVM_GET_LAPIC) K(KVM_SET_LAPIC)
  K(KVM_GET_MSRS) K(KVM_SET_MSRS) K(KVM_SET_CPUID2) K(KVM_GET_CPUID2)
  K(KVM_GET_MP_STATE) K(KVM_SET_MP_STATE) K(KVM_GET_VCPU_EVENTS) K(KVM_SET_VCPU_EVENTS)
  K(KVM_GET_TSC_KHZ) K(KVM_KVMCLOCK_CTRL)
  // capabilities
  K(KVM_CAP_IRQCHIP) K(KVM_CAP_USER_MEMORY) K(KVM_CAP_SET_TSS_ADDR) K(KVM_CAP_EXT_CPUID)
  K(KVM_CAP_NR_VCPUS) K(KVM_CAP_MAX_VCPUS) K(KVM_CAP_PIT2) K(KVM_CAP_IOEVENTFD) K(KVM_CAP_IRQFD)
  K(KVM_CAP_IMMEDIATE_EXIT) K(KVM_CAP_XSAVE) K(KVM_CAP_XCRS) K(KVM_CAP_VCPU_EVENTS)
  K(KVM_CAP_DEBUGREGS) K(KVM_CAP_ADJUST_CLOCK) K(KVM_CAP_GET_TSC_KHZ) K(KVM_CAP_MP_STATE)
  K(KVM_CAP_PIT_STATE2) K(KVM_CAP_SYNC_MMU) K(KVM_CAP_NR_MEMSLOTS)
  K(KVM_CAP_COALESCED_MMIO) K(KVM_CAP_COALESCED_PIO)
  // exit reasons
  K(KVM_EXIT_UNKNOWN) K(KVM_EXIT_EXCEPTION) K(KVM_EXIT_IO) K(KVM_EXIT_HYPERCALL) K(KVM_EXIT_DEBUG)
  K(KVM_EXIT_HLT) K(KVM_EXIT_MMIO) K(KVM_EXIT_IRQ_WINDOW_OPEN) K(KVM_EXIT_SHUTDOWN)
  K(KVM_EXIT_FAIL_ENTRY) K(KVM_EXIT_INTR) K(KVM_EXIT_INTERNAL_ERROR) K(KVM_EXIT_SYSTEM_EVENT)
  K(KVM_EXIT_IO_IN) K(KVM_EXIT_IO_OUT)
  K(KVM_SYSTEM_EVENT_SHUTDOWN) K(KVM_SYSTEM_EVENT_RESET) K(KVM_SYSTEM_EVENT_CRASH)
  K(KVM_INTERNAL_ERROR_EMULATION) K(KVM_INTERNAL_ERROR_SIMUL_EX) K(KVM_INTERNAL_ERROR_DELIVERY_EV)
  K(KVM_MP_STATE_RUNNABLE) K(KVM_MP_STATE_UNINITIALIZED) K(KVM_MP_STATE_HALTED)
  K(KVM_IRQCHIP_PIC_MASTER) K(KVM_IRQCHIP_PIC_SLAVE) K(KVM_IRQCHIP_IOAPIC)
  K(KVM_IOEVENTFD_FLAG_DATAMATCH) K(KVM_IOEVENTFD_FLAG_PIO) K(KVM_IOEVENTFD_FLAG_DEASSIGN)
  K(KVM_IRQFD_FLAG_DEASSIGN) K(KVM_IRQ_ROUTING_IRQCHIP) K(KVM_IRQ_ROUTING_MSI) K(KVM_CAP_IRQ_ROUTING)
  // TAP
  K(TUNSETIFF) K(IFF_TAP) K(IFF_NO_PI) K(IFF_VNET_HDR) K(TUNSETVNETHDRSZ) K(TUNSETOFFLOAD)
  // struct sizes
  SIZE(kvm_run) SIZE(kvm_regs) SIZE(kvm_sregs) SIZE(kvm_segment) SIZE(kvm_dtable) SIZE(kvm_fpu)
  SIZE(kvm_xsave) SIZE(kvm_xcrs) SIZE(kvm_debugregs) SIZE(kvm_lapic_state) SIZE(kvm_msrs)
  SIZE(kvm_msr_entry) SIZE(kvm_cpuid2) SIZE(kvm_cpuid_entry2) SIZE(kvm_mp_state)
  SIZE(kvm_vcpu_events) SIZE(kvm_pit_state2) SIZE(kvm_clock_data) SIZE(kvm_irqchip)
  SIZE(kvm_userspace_memory_region) SIZE(kvm_irqfd) SIZE(kvm_ioeventfd) SIZE(kvm_irq_level)
  SIZE(kvm_irq_routing) SIZE(kvm_irq_routing_entry)
  SIZE(kvm_pit_config)
  SIZE(kvm_coalesced_mmio_zone) SIZE(kvm_coalesced_mmio) SIZE(kvm_coalesced_mmio_ring)
  OFF(kvm_coalesced_mmio_zone, addr, "addr") OFF(kvm_coalesced_mmio_zone, size, "size")
  OFF(kvm_coalesced_mmio_zone, pio, "pio")
  OFF(kvm_coalesced_mmio, phys_addr, "phys_addr") OFF(kvm_coalesced_mmio, len, "len")
  OFF(kvm_coalesced_mmio, pio, "pio") OFF(kvm_coalesced_mmio, data, "data")
  OFF(kvm_coalesced_mmio_ring, first, "first") OFF(kvm_coalesced_mmio_ring, last, "last")
  OFF(kvm_coalesced_mmio_ring, coalesced_mmio, "entries")
  // kvm_run fields
  OFF(kvm_irq_routing_entry, u, "u")
  OFF(kvm_irqchip, chip, "chip")
  OFF(kvm_ioapic_state, redirtbl, "redirtbl")
  OFF(kvm_run, request_interrupt_window, "request_interrupt_window")
  OFF(kvm_run, immediate_exit, "immediate_exit")
  OFF(kvm_run, exit_reason, "exit_reason")
  OFF(kvm_run, io.direction, "io_direction")
  OFF(kvm_run, io.size, "io_size")
  OFF(kvm_run, io.port, "io_port")
  OFF(kvm_run, io.count, "io_count")
  OFF(kvm_run, io.data_offset, "io_data_offset")
  OFF(kvm_run, mmio.phys_addr, "mmio_phys_addr")
  OFF(kvm_run, mmio.data, "mmio_data")
  OFF(kvm_run, mmio.len, "mmio_len")
  OFF(kvm_run, mmio.is_write, "mmio_is_write")
  OFF(kvm_run, fail_entry.hardware_entry_failure_reason, "fail_entry_reason")
  OFF(kvm_run, fail_entry.cpu, "fail_entry_cpu")
  OFF(kvm_run, internal.suberror, "internal_suberror")
  OFF(kvm_run, internal.ndata, "internal_ndata")
  OFF(kvm_run, internal.data, "internal_data")
  OFF(kvm_run, system_event.type, "system_event_type")
  OFF(kvm_run, system_event.ndata, "system_event_ndata")
  OFF(kvm_run, ex.exception, "ex_exception")
  OFF(kvm_run, ex.error_code, "ex_error_code")
  // kvm_sregs / kvm_segment
  OFF(kvm_sregs, cs, "cs") OFF(kvm_sregs, ds, "ds") OFF(kvm_sregs, es, "es") OFF(kvm_sregs, fs, "fs")
  OFF(kvm_sregs, gs, "gs") OFF(kvm_sregs, ss, "ss") OFF(kvm_sregs, tr, "tr") OFF(kvm_sregs, ldt, "ldt")
  OFF(kvm_sregs, gdt, "gdt") OFF(kvm_sregs, idt, "idt") OFF(kvm_sregs, cr0, "cr0") OFF(kvm_sregs, cr2, "cr2")
  OFF(kvm_sregs, cr3, "cr3") OFF(kvm_sregs, cr4, "cr4") OFF(kvm_sregs, cr8, "cr8") OFF(kvm_sregs, efer, "efer")
  OFF(kvm_sregs, apic_base, "apic_base")
  OFF(kvm_segment, base, "base") OFF(kvm_segment, limit, "limit") OFF(kvm_segment, selector, "selector")
  OFF(kvm_segment, type, "type") OFF(kvm_segment, present, "present") OFF(kvm_segment, dpl, "dpl")
  OFF(kvm_segment, db, "db") OFF(kvm_segment, s, "s") OFF(kvm_segment, l, "l") OFF(kvm_segment, g, "g")
  OFF(kvm_segment, avl, "avl") OFF(kvm_segment, unusable, "unusable")
  OFF(kvm_dtable, base, "base") OFF(kvm_dtable, limit, "limit")
#undef K
#undef SIZE
#undef OFF
};
const size_t tsvmm_constants_count = sizeof tsvmm_constants / sizeof tsvmm_constants[0];
