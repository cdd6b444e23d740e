/* blk.c: virtio-blk driver and the `blk` / `blk-loop` workloads (CPL3). Requests live in slots
 * (header, status byte, 3-entry indirect table, one data buffer of bs bytes); up to qd slots are
 * in flight at once. Writes carry self-describing blocks (blkfmt.c) that are read back and
 * verified; every failed request and every bad block is counted and reported. */
#include "virtio.h"
#include "blkfmt.h"

#define T_IN      0
#define T_OUT     1
#define T_FLUSH   4
#define T_GET_ID  8
#define F_RO      5
#define F_FLUSH   9
#define S_OK      0
#define S_IOERR   1
#define MAX_ERR_LINES 100           /* @blk-error lines per phase (blk) or pass (blk-loop) */

struct req_hdr { u32 type, reserved; u64 sector; };
struct slot {
    struct req_hdr hdr;             /* device-readable */
    volatile u8 status;             /* device-writable */
    u8 pad[15];
    struct vq_desc ind[3];          /* indirect table (16-byte aligned) */
    u8 *buf;
    u64 block;
    u32 type, len;
    u8 inflight;                    /* submitted, not yet reaped (resubmitted after a device reset) */
} __attribute__((aligned(128)));

static struct vdev dev;
static struct virtq *vq;
static struct slot *slots;
static u16 *free_slots;
static u32 nfree, qd, bs;
static u64 capacity, nblocks;
static u64 timeout_s, errors_total, err_lines, report_every, progress_done;
static int verify, loop_mode;
static u64 pass_no;

/* Queues one request on slot s (data may be 0 with len 0). */
static void submit(u32 s, u32 type, u64 sector, void *data, u32 len)
{
    struct slot *sl = &slots[s];
    sl->hdr.type = type;
    sl->hdr.reserved = 0;
    sl->hdr.sector = sector;
    sl->status = 0xff;
    sl->type = type;
    sl->len = len;
    sl->inflight = 1;
    struct vq_desc *d = dev.indirect ? sl->ind : &vq->desc[3 * s];
    u16 base = dev.indirect ? 0 : (u16)(3 * s), n = 0;
    d[n] = (struct vq_desc){ (u64)&sl->hdr, sizeof sl->hdr, VIRTQ_DESC_F_NEXT, base + 1 };
    n++;
    if (len) {
        u16 fl = VIRTQ_DESC_F_NEXT | (type == T_OUT ? 0 : VIRTQ_DESC_F_WRITE);
        d[n] = (struct vq_desc){ (u64)data, len, fl, (u16)(base + n + 1) };
        n++;
    }
    d[n] = (struct vq_desc){ (u64)&sl->status, 1, VIRTQ_DESC_F_WRITE, 0 };
    n++;
    if (dev.indirect) {
        vq->desc[s] = (struct vq_desc){ (u64)sl->ind, 16u * n, VIRTQ_DESC_F_INDIRECT, 0 };
        virtq_push(vq, (u16)s);
    } else {
        virtq_push(vq, (u16)(3 * s));
    }
}

static void setup_queue(void);
static u64 resets;

/* The device set DEVICE_NEEDS_RESET (virtio 1.2 2.1.2: it hit an error it cannot recover from, e.g.
 * a malformed ring) and said so with a configuration-change interrupt, or the queue stalled: reset
 * it, set it up again and resubmit every request that was in flight (a write carries the same
 * data again; a read is read again), as a Linux driver's reset path does. */
static int reset_if_needed(int stalled)
{
    if (!dev.config_changed && !stalled)
        return 0;
    dev.config_changed = 0;
    if (!(virtio_status(&dev) & 0x40))
        return 0;
    u32 n = 0;
    for (u32 s = 0; s < qd; s++)
        n += slots[s].inflight;
    out_line("@blk-reset reason=needs_reset inflight=%u resets=%lu", n, ++resets);
    setup_queue();
    for (u32 s = 0; s < qd; s++) {
        struct slot *sl = &slots[s];
        if (sl->inflight)
            submit(s, sl->type, sl->hdr.sector, sl->len ? sl->buf : 0, sl->len);
    }
    virtq_kick(vq);
    return 1;
}

/* Waits for completions, printing @blk-stall every 10 s without one; fails after timeout_s. */
static void wait_some(void)
{
    u64 waited = 0;
    while (!virtio_wait(&dev, seconds_to_cycles(10))) {
        waited += 10;
        out_line("@blk-stall inflight=%u waited_s=%lu", qd - nfree, waited);
        if (reset_if_needed(1))
            return;
        if (timeout_s && waited >= timeout_s)
            fail("blk", "detail=timeout inflight=%u waited_s=%lu errors=%lu", qd - nfree, waited,
                 errors_total);
    }
    reset_if_needed(0);
}

/* Takes one completion: returns its slot, or -1 if none. A used element naming no request of ours
 * (a head this driver never made available: the device's answer to a request someone else put on
 * our ring, tsvmm inject driver-domain ring) is reported and skipped, as Linux's virtio_ring
 * reports "id is not a head", and the workload goes on. */
static int reap(void)
{
    u32 id, len;
    for (;;) {
        if (!virtq_pop(vq, &id, &len))
            return -1;
        u32 s = dev.indirect ? id : id / 3;
        if (s < qd && (dev.indirect || id % 3 == 0) && slots[s].inflight) {
            slots[s].inflight = 0;
            return (int)s;
        }
        errors_total++;
        if (++err_lines <= MAX_ERR_LINES)
            out_line("@blk-error op=reap what=bad_used_id id=%u len=%u", id, len);
    }
}

/* Runs one request to completion on slot 0 (nothing else in flight); returns its status. */
static u32 sync_req(u32 type, u64 sector, void *data, u32 len)
{
    submit(0, type, sector, data, len);
    virtq_kick(vq);
    int s;
    nfree = qd - 1;
    while ((s = reap()) < 0)
        wait_some();
    nfree = qd;
    return slots[s].status;
}

static void blk_error(const char *op, u64 sector, const char *what, u32 status, u64 gen)
{
    errors_total++;
    if (++err_lines <= MAX_ERR_LINES)
        out_line("@blk-error op=%s sector=%lu what=%s status=%u gen=%lu", op, sector, what, status,
                 gen);
}

static u64 mix64(u64 x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdul;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ul;
    x ^= x >> 33;
    return x;
}

/* One phase: n requests of one kind, sequential from block 0 or pseudo-random (the same sequence
 * for the write and the read of a pass), keeping qd in flight. Returns the phase's errors. */
static u64 phase(int write, int rnd, u64 n, u64 gen)
{
    u64 issued = 0, done = 0, errors0 = errors_total, kicks0 = vq->kicks, irqs0 = dev.irqs,
        lost0 = dev.lost_irqs;
    u64 t0 = rdtsc();
    while (done < n) {
        while (issued < n && nfree) {
            u32 s = free_slots[--nfree];
            u64 blk = rnd ? mix64(issued ^ (gen << 40) ^ 0x5eed) % nblocks : issued % nblocks;
            u64 sector = blk * (bs / 512);
            slots[s].block = blk;
            if (write)
                blk_fill(slots[s].buf, bs, sector, gen);
            submit(s, write ? T_OUT : T_IN, sector, slots[s].buf, bs);
            issued++;
        }
        virtq_kick(vq);
        int s = reap();
        if (s < 0) {
            wait_some();
            continue;
        }
        for (; s >= 0; s = reap()) {
            struct slot *sl = &slots[s];
            u64 sector = sl->block * (bs / 512);
            if (sl->status != S_OK) {
                blk_error(write ? "write" : "read", sector, "status", sl->status, gen);
            } else if (!write && verify) {
                const char *bad = blk_check(sl->buf, bs, sector, gen);
                if (bad)
                    blk_error("read", sector, bad, 0, gen);
            }
            free_slots[nfree++] = (u16)s;
            done++;
            progress_done++;
            if (report_every && progress_done % report_every == 0) {
                if (loop_mode)
                    out_line("@blk-progress pass=%lu done=%lu errors=%lu", pass_no, progress_done,
                             errors_total);
                else
                    out_line("@blk-progress done=%lu errors=%lu tsc=%lu", progress_done, errors_total,
                             rdtsc());
            }
        }
    }
    u64 cycles = rdtsc() - t0, errs = errors_total - errors0;
    char extra[96] = "";
    if (boot.tsc_khz && cycles) {
        u64 us = cycles * 1000 / boot.tsc_khz;
        format(extra, sizeof extra, " us=%lu iops=%lu kb_s=%lu", us, us ? n * 1000000 / us : 0,
               us ? n * bs / 1024 * 1000000 / us : 0);
    }
    out_line("@blk phase=%s mode=%s n=%lu bytes=%lu cycles=%lu errors=%lu bs=%u qd=%u gen=%lu "
             "kicks=%lu irqs=%lu lost_irqs=%lu%s", write ? "write" : "read", rnd ? "rand" : "seq", n,
             n * bs, cycles, errs, bs, qd, gen, vq->kicks - kicks0, dev.irqs - irqs0,
             dev.lost_irqs - lost0, extra);
    return errs;
}

static void flush(void)
{
    if (!(dev.features & (1ul << F_FLUSH)))
        return;
    u32 st = sync_req(T_FLUSH, 0, 0, 0);
    if (st != S_OK)
        blk_error("flush", 0, "status", st, 0);
}

/* Reset, negotiate, one queue, DRIVER_OK (at start, and after the device asked for a reset). */
static void setup_queue(void)
{
    virtio_negotiate(&dev, (1ul << F_RO) | (1ul << F_FLUSH), "blk");
    vq = virtio_queue(&dev, 0, (u16)cmdline_u64("blk_qsize", 256), "blk");
    virtio_ready(&dev);
}

static void setup(void)
{
    if (!virtio_find(VIRTIO_ID_BLK, (int)cmdline_u64("blk_dev", 0), &dev))
        fail("blk", "detail=no_device");
    setup_queue();
    u32 max_qd = dev.indirect ? vq->num : vq->num / 3;
    qd = (u32)cmdline_u64("qd", 1);
    qd = qd < 1 ? 1 : qd > max_qd ? max_qd : qd;
    const char *bsv = cmdline_get("bs", 0);
    bs = bsv ? (u32)parse_size(bsv, 0) : 4096;
    if (bs < 512 || bs % 512 || bs > (64u << 20))
        fail("blk", "detail=bad_bs bs=%u", bs);
    capacity = virtio_cfg64(&dev, 0);
    nblocks = capacity * 512 / bs;
    if (!nblocks)
        fail("blk", "detail=disk_too_small capacity=%lu bs=%u", capacity, bs);
    slots = heap_alloc(sizeof(struct slot) * qd, 128);
    free_slots = heap_alloc(2ul * qd, 64);
    u64 buf_off = cmdline_u64("buf_off", 0) % 4096;   /* misaligned buffers (O_DIRECT bounce test) */
    for (u32 i = 0; i < qd; i++) {
        slots[i].buf = (u8 *)heap_alloc(bs + buf_off, 4096) + buf_off;
        free_slots[i] = (u16)(qd - 1 - i);
    }
    nfree = qd;
    verify = (int)cmdline_u64("verify", 1);
    report_every = cmdline_u64("blk_report", 0);
    char id[21] = "";
    if (sync_req(T_GET_ID, 0, slots[0].buf, 20) == S_OK) {
        memcpy(id, slots[0].buf, 20);
        for (int i = 0; i < 20 && id[i]; i++)
            if (id[i] <= ' ' || id[i] > '~' || id[i] == '"')
                id[i] = '_';
    }
    out_line("@blk-dev capacity=%lu blocks=%lu bs=%u qd=%u ro=%u flush=%u id=\"%s\"", capacity,
             nblocks, bs, qd, !!(dev.offered & (1ul << F_RO)),
             !!(dev.features & (1ul << F_FLUSH)), id);
}

/* ro=1: a write must fail with IOERR (and a read succeed). */
static NORETURN void ro_check(void)
{
    u32 w = sync_req(T_OUT, 0, slots[0].buf, bs);
    u32 r = sync_req(T_IN, 0, slots[0].buf, bs);
    if (w != S_IOERR || r != S_OK)
        fail("blk", "detail=ro write_status=%u read_status=%u feature_ro=%u", w, r,
             !!(dev.offered & (1ul << F_RO)));
    out_line("@blk ro=ok write_status=%u read_status=%u feature_ro=%u", w, r,
             !!(dev.offered & (1ul << F_RO)));
    out_line("@done ok");
    poweroff(0);
}

NORETURN void blk_workload(int loop)
{
    loop_mode = loop;
    timeout_s = cmdline_u64("blk_timeout", loop ? 120 : 30);
    setup();
    if (cmdline_u64("ro", 0))
        ro_check();
    u64 n = cmdline_u64("blk_n", nblocks < 1024 ? nblocks : 1024);
    u64 gen = cmdline_u64("gen", 1);
    int seq = cmdline_is("mode", "seq", 1) || cmdline_is("mode", "both", 0);
    int rnd = cmdline_is("mode", "rand", 0) || cmdline_is("mode", "both", 0);
    int do_write = !cmdline_is("blk_op", "read", 0), do_read = !cmdline_is("blk_op", "write", 0);
    if (!seq && !rnd)
        fail("blk", "detail=bad_mode");
    if (!loop) {
        /* blk_repeat=R: each phase R times in a row, each timed (bench/blk: the first run of a fresh
         * VMM's data path, then the same requests again). */
        u64 repeat = cmdline_u64("blk_repeat", 1);
        for (int r = 0; r < 2; r++) {
            if (!(r ? rnd : seq))
                continue;
            err_lines = 0;
            for (u64 k = 0; do_write && k < repeat; k++) {
                phase(1, r, n, gen);
                flush();
            }
            for (u64 k = 0; do_read && k < repeat; k++)
                phase(0, r, n, gen);
        }
        if (errors_total)
            fail("blk", "detail=verify errors=%lu", errors_total);
        out_line("@done ok");
        poweroff(0);
    }
    for (pass_no = 0;; pass_no++) {          /* blk-loop: write + verify forever, gen++ */
        int r = seq && rnd ? (int)(pass_no & 1) : rnd;
        u64 g = gen + pass_no, e0 = errors_total;
        err_lines = 0;
        progress_done = 0;
        phase(1, r, n, g);
        flush();
        phase(0, r, n, g);
        if (err_lines > MAX_ERR_LINES)
            out_line("@blk-error-suppressed n=%lu", err_lines - MAX_ERR_LINES);
        out_line("@blk-progress pass=%lu done=%lu errors=%lu pass_errors=%lu gen=%lu end=1",
                 pass_no, progress_done, errors_total, errors_total - e0, g);
    }
}
