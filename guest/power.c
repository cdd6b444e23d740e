/* power.c: the ACPI power button (tsvmm stop). tsvmm's Generic Event Device (acpi.c finds it in
 * the DSDT) raises one interrupt with the pending events in a 32-bit register (writing 1s clears
 * them). The IOAPIC sends it to CPU 0 as VEC_GED; start.S's irq_ged reads and acknowledges the
 * register at CPL0 and, for the power button, leaves through power_button() at CPL3 (its own
 * stack, IF=0: the interrupted code is not resumed), which powers off as a finished workload
 * does. `power_button=ignore` on the command line leaves the interrupt unrouted: a guest that does
 * not handle the button, which tsvmm stop stops hard after its timeout. */
#include "guest.h"

u64 ged_reg;    /* the event register; 0: no GED (start.S reads it) */

NORETURN void power_button(u64 events)
{
    char buf[96];
    format(buf, sizeof buf, "@power-button events=0x%lx action=poweroff", events);
    put_line_bounded(buf);
    poweroff(0);
}

void power_init(void)
{
    u64 reg = 0;
    u32 gsi = 0;
    if (cmdline_is("power_button", "ignore", 0) || !boot.rsdp || !acpi_find_ged(boot.rsdp, &reg, &gsi))
        return;
    ged_reg = reg;
    ioapic_route_vector(gsi, VEC_GED, "power");
    /* Pressed before the interrupt was routed (an edge the IOAPIC dropped): take it now. */
    u32 ev = *(volatile u32 *)reg;
    if (ev & GED_POWER_BUTTON) {
        *(volatile u32 *)reg = ev;
        power_button(ev);
    }
}
