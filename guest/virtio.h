/* virtio.h: virtio-mmio (version 2, modern only) transport and split virtqueues for the CPL3
 * drivers (blk.c, net.c). Devices come from `virtio_mmio.device=<size>@<addr>:<gsi>` entries on
 * the command line; completion is polled (spin on used idx) or, with `virtio_irq=1`, interrupt
 * driven through the IOAPIC (vector VEC_VIRTIO+gsi, whose CPL0 stub bumps vec_count[gsi]). */
#ifndef VIRTIO_H
#define VIRTIO_H
#include "guest.h"

#define VIRTIO_ID_NET   1
#define VIRTIO_ID_BLK   2

#define VIRTIO_F_INDIRECT_DESC   28
#define VIRTIO_F_RING_EVENT_IDX  29
#define VIRTIO_F_VERSION_1       32

#define VIRTQ_DESC_F_NEXT        1
#define VIRTQ_DESC_F_WRITE       2
#define VIRTQ_DESC_F_INDIRECT    4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY   1

struct vq_desc { u64 addr; u32 len; u16 flags, next; };
struct vq_avail { u16 flags, idx, ring[]; };           /* ring[num], then used_event */
struct vq_used_elem { u32 id, len; };
struct vq_used { u16 flags, idx; struct vq_used_elem ring[]; }; /* then avail_event */

struct vdev;
struct virtq {
    struct vdev *dev;
    u16 index, num;
    struct vq_desc *desc;
    volatile struct vq_avail *avail;
    volatile struct vq_used *used;
    volatile u16 *used_event, *avail_event;
    u16 avail_idx;              /* next avail idx to publish (shadow of avail->idx) */
    u16 kicked_idx;             /* avail idx at the last notify decision */
    u16 last_used;              /* next used idx to consume */
    u64 kicks, completions;
};

struct vdev {
    u64 base;                   /* MMIO window */
    u32 size, gsi, device_id;
    u64 offered, features;      /* device features, negotiated features */
    int indirect, event_idx, irq, halt;
    u64 irq_seen;               /* vec_count[gsi] already accounted for */
    u64 irqs, lost_irqs;        /* interrupts taken; completions found without one */
    struct virtq q[2];
    int nq;
    int config_changed;         /* the device raised a configuration change (ISR bit 1): e.g. NEEDS_RESET */
};

/* Finds the nth (0-based) device of this id among the cmdline entries; 1 if found. */
int virtio_find(u32 device_id, int nth, struct vdev *d);
/* Reset, ACK, DRIVER, negotiate (VERSION_1 + INDIRECT/EVENT_IDX if offered and allowed + the
 * device bits in `want`), FEATURES_OK. Fails the guest with what=<what> on a refusal. */
void virtio_negotiate(struct vdev *d, u64 want, const char *what);
/* Allocates and registers queue `index` with at most `max` entries (power of two). */
struct virtq *virtio_queue(struct vdev *d, u16 index, u16 max, const char *what);
/* The device status register (DEVICE_NEEDS_RESET is bit 6). */
u32 virtio_status(struct vdev *d);
/* DRIVER_OK; programs the IOAPIC when d->irq. */
void virtio_ready(struct vdev *d);
u32 virtio_cfg8(struct vdev *d, u32 off);
u32 virtio_cfg32(struct vdev *d, u32 off);
u64 virtio_cfg64(struct vdev *d, u32 off);

/* Puts a chain head on the avail ring (no notify). */
void virtq_push(struct virtq *q, u16 head);
/* Notifies the device of everything pushed since the last kick (honours EVENT_IDX/NO_NOTIFY). */
void virtq_kick(struct virtq *q);
/* Takes one used element; 1 if there was one. */
int virtq_pop(struct virtq *q, u32 *id, u32 *len);
static inline int virtq_has_used(struct virtq *q) { return q->used->idx != q->last_used; }
/* Waits until one of the device's queues has a used element or `timeout` cycles pass (0 on
 * timeout). Polled: spins on the used idx. Interrupt mode: re-arms (used_event), then spins until
 * vec_count[gsi] moves and acknowledges InterruptStatus; once a second it also looks at the used
 * rings so a lost edge cannot hang it (counted in lost_irqs). */
int virtio_wait(struct vdev *d, u64 timeout);
#endif
