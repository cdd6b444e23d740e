/* virtio.c: virtio-mmio v2 transport for the CPL3 drivers: device discovery from the
 * `virtio_mmio.device=<size>@<addr>:<gsi>` cmdline entries (Linux syntax, what QEMU microvm
 * appends), feature negotiation, split virtqueues in guest RAM, QueueNotify with EVENT_IDX /
 * NO_NOTIFY suppression, and completion waiting: polled, or through the IOAPIC (programmed here
 * from CPL3) with a tiny CPL0 stub per GSI (start.S) that bumps vec_count[gsi] and EOIs. */
#include "virtio.h"

#define R_MAGIC        0x000
#define R_VERSION      0x004
#define R_DEVICE_ID    0x008
#define R_DEV_FEAT     0x010
#define R_DEV_FEAT_SEL 0x014
#define R_DRV_FEAT     0x020
#define R_DRV_FEAT_SEL 0x024
#define R_QUEUE_SEL    0x030
#define R_QUEUE_MAX    0x034
#define R_QUEUE_NUM    0x038
#define R_QUEUE_READY  0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INT_STATUS   0x060
#define R_INT_ACK      0x064
#define R_STATUS       0x070
#define R_DESC_LO      0x080
#define R_DESC_HI      0x084
#define R_DRIVER_LO    0x090
#define R_DRIVER_HI    0x094
#define R_DEVICE_LO    0x0a0
#define R_DEVICE_HI    0x0a4
#define R_CONFIG       0x100

#define S_ACK          1
#define S_DRIVER       2
#define S_DRIVER_OK    4
#define S_FEATURES_OK  8

#define IOAPIC0        0xFEC00000ul
#define IOAPIC1        0xFEC10000ul     /* QEMU microvm's second IOAPIC: GSI 24..47 */

static u32 rd(struct vdev *d, u32 off) { return *(volatile u32 *)(d->base + off); }
static void wr(struct vdev *d, u32 off, u32 v) { *(volatile u32 *)(d->base + off) = v; }

u32 virtio_status(struct vdev *d) { return rd(d, R_STATUS); }

u32 virtio_cfg8(struct vdev *d, u32 off) { return *(volatile u8 *)(d->base + R_CONFIG + off); }
u32 virtio_cfg32(struct vdev *d, u32 off) { return rd(d, R_CONFIG + off); }
u64 virtio_cfg64(struct vdev *d, u32 off)
{
    u32 lo, hi, gen;
    do {                                    /* ConfigGeneration guards the two halves */
        gen = rd(d, 0x0fc);
        lo = rd(d, R_CONFIG + off);
        hi = rd(d, R_CONFIG + off + 4);
    } while (gen != rd(d, 0x0fc));
    return ((u64)hi << 32) | lo;
}

int virtio_find(u32 device_id, int nth, struct vdev *d)
{
    const char *v;
    for (int i = 0; (v = cmdline_get("virtio_mmio.device", i)); i++) {
        const char *p;
        u64 size = parse_size(v, &p), base, gsi;
        if (*p++ != '@')
            continue;
        base = parse_size(p, &p);
        if (*p++ != ':')
            continue;
        gsi = parse_u64(p);
        if (base < 0xC0000000ul || base >= 0x100000000ul || size < 0x100 || gsi >= VIRTIO_GSIS) {
            out_line("@virtio skip entry=%u base=0x%lx size=%lu gsi=%lu detail=unusable", i, base,
                     size, gsi);
            continue;
        }
        volatile u32 *r = (volatile u32 *)base;
        u32 magic = r[R_MAGIC / 4], ver = r[R_VERSION / 4], id = r[R_DEVICE_ID / 4];
        if (magic != 0x74726976 || id != device_id)
            continue;
        if (ver != 2) {
            out_line("@virtio skip base=0x%lx id=%u version=%u detail=not_modern", base, id, ver);
            continue;
        }
        if (nth-- > 0)
            continue;
        memset(d, 0, sizeof *d);
        d->base = base;
        d->size = (u32)size;
        d->gsi = (u32)gsi;
        d->device_id = id;
        return 1;
    }
    return 0;
}

void virtio_negotiate(struct vdev *d, u64 want, const char *what)
{
    wr(d, R_STATUS, 0);                                     /* reset */
    while (rd(d, R_STATUS))
        cpu_relax();
    wr(d, R_STATUS, S_ACK);
    wr(d, R_STATUS, S_ACK | S_DRIVER);
    wr(d, R_DEV_FEAT_SEL, 0);
    u64 f = rd(d, R_DEV_FEAT);
    wr(d, R_DEV_FEAT_SEL, 1);
    f |= (u64)rd(d, R_DEV_FEAT) << 32;
    d->offered = f;
    if (!(f & (1ul << VIRTIO_F_VERSION_1)))
        fail(what, "detail=no_version_1 base=0x%lx features=0x%lx", d->base, f);
    want |= 1ul << VIRTIO_F_VERSION_1;
    if (cmdline_u64("virtio_indirect", 1))
        want |= 1ul << VIRTIO_F_INDIRECT_DESC;
    if (cmdline_u64("virtio_event_idx", 1))
        want |= 1ul << VIRTIO_F_RING_EVENT_IDX;
    d->features = f & want;
    d->indirect = !!(d->features & (1ul << VIRTIO_F_INDIRECT_DESC));
    d->event_idx = !!(d->features & (1ul << VIRTIO_F_RING_EVENT_IDX));
    d->irq = (int)cmdline_u64("virtio_irq", 0);
    d->halt = d->irq && (int)cmdline_u64("virtio_halt", 1);
    wr(d, R_DRV_FEAT_SEL, 0);
    wr(d, R_DRV_FEAT, (u32)d->features);
    wr(d, R_DRV_FEAT_SEL, 1);
    wr(d, R_DRV_FEAT, (u32)(d->features >> 32));
    wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if (!(rd(d, R_STATUS) & S_FEATURES_OK))
        fail(what, "detail=features_refused base=0x%lx features=0x%lx", d->base, d->features);
}

struct virtq *virtio_queue(struct vdev *d, u16 index, u16 max, const char *what)
{
    struct virtq *q = &d->q[index];
    wr(d, R_QUEUE_SEL, index);
    u32 nmax = rd(d, R_QUEUE_MAX);
    if (!nmax || rd(d, R_QUEUE_READY))
        fail(what, "detail=queue_unavailable queue=%u max=%u", index, nmax);
    u32 num = 1;
    while (num * 2 <= nmax && num * 2 <= max)
        num *= 2;
    u64 avail_off = 16ul * num, used_off = (avail_off + 6 + 2ul * num + 4095) & ~4095ul;
    u8 *mem = heap_alloc(used_off + 6 + 8ul * num, 4096);
    q->dev = d;
    q->index = index;
    q->num = (u16)num;
    q->avail_idx = q->kicked_idx = q->last_used = 0;   /* a queue set up again after a device reset */
    q->desc = (struct vq_desc *)mem;
    q->avail = (volatile struct vq_avail *)(mem + avail_off);
    q->used = (volatile struct vq_used *)(mem + used_off);
    q->used_event = &q->avail->ring[num];
    q->avail_event = (volatile u16 *)&q->used->ring[num];
    if (!d->irq)
        q->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;   /* polled: ignored under EVENT_IDX */
    wr(d, R_QUEUE_NUM, num);
    wr(d, R_DESC_LO, (u32)(u64)q->desc);
    wr(d, R_DESC_HI, (u32)((u64)q->desc >> 32));
    wr(d, R_DRIVER_LO, (u32)(u64)q->avail);
    wr(d, R_DRIVER_HI, (u32)((u64)q->avail >> 32));
    wr(d, R_DEVICE_LO, (u32)(u64)q->used);
    wr(d, R_DEVICE_HI, (u32)((u64)q->used >> 32));
    wr(d, R_QUEUE_READY, 1);
    if (index >= d->nq)
        d->nq = index + 1;
    return q;
}

static u32 ioapic_rd(u64 base, u32 reg)
{
    *(volatile u32 *)base = reg;
    return *(volatile u32 *)(base + 0x10);
}

static void ioapic_wr(u64 base, u32 reg, u32 v)
{
    *(volatile u32 *)base = reg;
    *(volatile u32 *)(base + 0x10) = v;
}

/* Edge-triggered, active high, fixed delivery, physical destination APIC id 0. */
void ioapic_route_vector(u32 gsi, u32 vector, const char *what)
{
    u64 base = gsi < 24 ? IOAPIC0 : IOAPIC1;
    u32 pin = gsi < 24 ? gsi : gsi - 24;
    u32 ver = ioapic_rd(base, 1), maxpin = (ver >> 16) & 0xff;
    if (ver == 0xffffffff || pin > maxpin)
        fail(what, "detail=ioapic_pin gsi=%u ioapic=0x%lx version=0x%x", gsi, base, ver);
    ioapic_wr(base, 0x11 + 2 * pin, 0);                      /* destination APIC id 0 */
    ioapic_wr(base, 0x10 + 2 * pin, vector);
}

static void ioapic_route(u32 gsi, const char *what) { ioapic_route_vector(gsi, VEC_VIRTIO + gsi, what); }

/* Halts the CPU until an interrupt, unless *p != seen already (start.S: via a #GP to CPL0). */
void halt_unless_changed(volatile u64 *p, u64 seen);

void virtio_ready(struct vdev *d)
{
    static int watchdog;
    if (d->irq) {
        d->irq_seen = vec_count[d->gsi];
        ioapic_route(d->gsi, d->device_id == VIRTIO_ID_BLK ? "blk" : "net");
    }
    if (d->halt && !watchdog) {
        /* A halted CPU still wakes every 10 ms (LAPIC timer, periodic, 1 GHz KVM APIC bus), so the
         * stall and lost-interrupt checks in virtio_wait keep running without the device. */
        watchdog = 1;
        lapic_timer(1);
        lapic_write(LAPIC_TIMER_INIT, 10000000);
    }
    wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    wr(d, R_QUEUE_SEL, 0);
    out_line("@virtio dev=%s base=0x%lx gsi=%u offered=0x%lx features=0x%lx indirect=%u "
             "event_idx=%u irq=%u qsize=%u", d->device_id == VIRTIO_ID_BLK ? "blk" : "net",
             d->base, d->gsi, d->offered, d->features, d->indirect, d->event_idx, d->irq,
             d->q[0].num);
}

void virtq_push(struct virtq *q, u16 head)
{
    q->avail->ring[q->avail_idx & (q->num - 1)] = head;
    q->avail_idx++;
}

void virtq_kick(struct virtq *q)
{
    u16 old = q->kicked_idx, now = q->avail_idx;
    if (old == now)
        return;
    barrier();
    q->avail->idx = now;        /* ring entries were stored first (x86 keeps store order) */
    q->kicked_idx = now;
    mfence();                   /* the idx store must be visible before we read avail_event */
    int need;
    if (q->dev->event_idx) {
        u16 ev = *q->avail_event;
        need = (u16)(now - ev - 1) < (u16)(now - old);
    } else {
        need = !(q->used->flags & VIRTQ_USED_F_NO_NOTIFY);
    }
    if (need) {
        wr(q->dev, R_QUEUE_NOTIFY, q->index);
        q->kicks++;
    }
}

int virtq_pop(struct virtq *q, u32 *id, u32 *len)
{
    if (q->used->idx == q->last_used)
        return 0;
    barrier();                  /* x86 does not reorder loads: the elem is read after idx */
    volatile struct vq_used_elem *e = &q->used->ring[q->last_used & (q->num - 1)];
    *id = e->id;
    *len = e->len;
    q->last_used++;
    q->completions++;
    return 1;
}

static int any_used(struct vdev *d)
{
    for (int i = 0; i < d->nq; i++)
        if (d->q[i].num && virtq_has_used(&d->q[i]))
            return 1;
    return 0;
}

int virtio_wait(struct vdev *d, u64 timeout)
{
    u64 t0 = rdtsc(), second = seconds_to_cycles(1), next_check = t0 + second;
    if (!d->irq) {
        while (!any_used(d))
            if (rdtsc() - t0 > timeout)
                return 0;
            else
                cpu_relax();
        return 1;
    }
    for (int i = 0; i < d->nq; i++)         /* re-arm: interrupt on the next completion */
        if (d->q[i].num) {
            if (d->event_idx)
                *d->q[i].used_event = d->q[i].last_used;
            else
                d->q[i].avail->flags = 0;
        }
    mfence();
    if (any_used(d))                        /* raced with the device: no interrupt needed */
        return 1;
    for (;;) {
        u64 c = vec_count[d->gsi];
        if (c != d->irq_seen) {
            d->irqs += c - d->irq_seen;
            d->irq_seen = c;
            u32 isr = rd(d, R_INT_STATUS);  /* ACK before scanning, so no completion is missed */
            if (isr)
                wr(d, R_INT_ACK, isr);
            if (isr & 2)
                d->config_changed = 1;
            return 1;
        }
        u64 now = rdtsc();
        if ((i64)(now - next_check) > 0) {
            next_check = now + second;
            if (any_used(d)) {
                d->lost_irqs++;
                u32 isr = rd(d, R_INT_STATUS);
                if (isr)
                    wr(d, R_INT_ACK, isr);
                if (isr & 2)
                    d->config_changed = 1;
                return 1;
            }
        }
        if (now - t0 > timeout)
            return 0;
        if (d->halt)
            halt_unless_changed(&vec_count[d->gsi], d->irq_seen);
        else
            cpu_relax();
    }
}
