/* net.c: virtio-net driver and the `net` workload (CPL3). Keeps the RX queue stocked with
 * 2 KiB buffers, answers ARP requests for its IP, ICMP echo requests (the host's `ping`) and
 * echoes UDP datagrams sent to port 7 back to the sender. MAC from the device config (feature
 * MAC), IP from `ip=` (default 10.0.2.15). No offloads, no mergeable RX buffers. */
#include "virtio.h"

#define F_MAC        5
#define HDR_LEN      12          /* struct virtio_net_hdr with num_buffers (VERSION_1) */
#define BUF_SIZE     2048
#define ETH_ARP      0x0806
#define ETH_IP       0x0800

static struct vdev dev;
static struct virtq *rxq, *txq;
static u8 *rxbuf, *txbuf;
static u16 *tx_free;
static u32 ntx_free;
static u8 mac[6], ip[4];
static u64 rx, tx, arp, icmp, udp, dropped, tx_full;

static u16 get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8), p[1] = (u8)v; }

/* One's-complement sum of big-endian 16-bit words (odd tail padded with 0). */
static u32 sum16(const u8 *p, u32 n, u32 sum)
{
    for (; n > 1; n -= 2, p += 2)
        sum += get16(p);
    if (n)
        sum += (u32)p[0] << 8;
    return sum;
}

static u16 fold(u32 sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (u16)~sum;
}

static void rx_post(u16 i)
{
    rxq->desc[i] = (struct vq_desc){ (u64)(rxbuf + (u64)i * BUF_SIZE), BUF_SIZE,
                                     VIRTQ_DESC_F_WRITE, 0 };
    virtq_push(rxq, i);
}

static void tx_reclaim(void)
{
    u32 id, len;
    while (virtq_pop(txq, &id, &len))
        if (id < txq->num)
            tx_free[ntx_free++] = (u16)id;
}

/* A TX buffer's frame area (after the virtio-net header); waits for one when all are busy. */
static u8 *tx_get(u16 *idx)
{
    tx_reclaim();
    while (!ntx_free) {
        tx_full++;
        virtq_kick(txq);
        if (!virtio_wait(&dev, seconds_to_cycles(30)))
            fail("net", "detail=tx_timeout tx=%lu", tx);
        tx_reclaim();
    }
    *idx = tx_free[--ntx_free];
    u8 *b = txbuf + (u64)*idx * BUF_SIZE;
    memset(b, 0, HDR_LEN);
    return b + HDR_LEN;
}

static void tx_send(u16 idx, u32 len)
{
    txq->desc[idx] = (struct vq_desc){ (u64)(txbuf + (u64)idx * BUF_SIZE), HDR_LEN + len, 0, 0 };
    virtq_push(txq, idx);
    tx++;
}

static void swap_eth(u8 *f)
{
    memcpy(f, f + 6, 6);
    memcpy(f + 6, mac, 6);
}

static void handle_arp(const u8 *f, u32 len)
{
    const u8 *a = f + 14;
    if (len < 42 || get16(a) != 1 || get16(a + 2) != ETH_IP || a[4] != 6 || a[5] != 4 ||
        get16(a + 6) != 1 || memcmp(a + 24, ip, 4)) {
        dropped++;
        return;
    }
    u16 t;
    u8 *o = tx_get(&t), *r = o + 14;
    memcpy(o, a + 8, 6);                /* to the requester's hardware address */
    memcpy(o + 6, mac, 6);
    put16(o + 12, ETH_ARP);
    put16(r, 1);
    put16(r + 2, ETH_IP);
    r[4] = 6, r[5] = 4;
    put16(r + 6, 2);                    /* reply */
    memcpy(r + 8, mac, 6);
    memcpy(r + 14, ip, 4);
    memcpy(r + 18, a + 8, 10);          /* target = requester's sha + spa */
    tx_send(t, 42);
    arp++;
}

/* Swaps the IPv4 addresses, resets TTL and the header checksum of the copy at o + 14. */
static void ip_reply(u8 *o, u32 ihl)
{
    u8 *h = o + 14, tmp[4];
    memcpy(tmp, h + 12, 4);
    memcpy(h + 12, h + 16, 4);
    memcpy(h + 16, tmp, 4);
    h[8] = 64;
    put16(h + 10, 0);
    put16(h + 10, fold(sum16(h, ihl, 0)));
}

static void handle_ip(const u8 *f, u32 len)
{
    const u8 *h = f + 14;
    if (len < 34 || (h[0] >> 4) != 4) {
        dropped++;
        return;
    }
    u32 ihl = (h[0] & 15) * 4u, tot = get16(h + 2);
    if (ihl < 20 || tot < ihl || 14 + tot > len || fold(sum16(h, ihl, 0)) != 0 ||
        memcmp(h + 16, ip, 4) || (get16(h + 6) & 0x3fff)) {    /* not ours, bad, or fragment */
        dropped++;
        return;
    }
    const u8 *l4 = h + ihl;
    u32 l4len = tot - ihl;
    if (h[9] == 1 && l4len >= 8 && l4[0] == 8) {                /* ICMP echo request */
        u16 t;
        u8 *o = tx_get(&t);
        memcpy(o, f, 14 + tot);
        swap_eth(o);
        ip_reply(o, ihl);
        u8 *ic = o + 14 + ihl;
        ic[0] = 0;                                              /* echo reply */
        put16(ic + 2, 0);
        put16(ic + 2, fold(sum16(ic, l4len, 0)));
        tx_send(t, 14 + tot);
        icmp++;
    } else if (h[9] == 17 && l4len >= 8 && get16(l4 + 2) == 7 && get16(l4 + 4) <= l4len &&
               get16(l4 + 4) >= 8) {                            /* UDP echo */
        u32 ulen = get16(l4 + 4);
        u16 t;
        u8 *o = tx_get(&t);
        memcpy(o, f, 14 + tot);
        swap_eth(o);
        ip_reply(o, ihl);
        u8 *u = o + 14 + ihl;
        put16(u, get16(l4 + 2));
        put16(u + 2, get16(l4));
        if (get16(l4 + 6)) {                                    /* 0 = no checksum: keep 0 */
            put16(u + 6, 0);
            u32 s = sum16(o + 14 + 12, 8, 17 + ulen);           /* pseudo-header */
            u16 c = fold(sum16(u, ulen, s));
            put16(u + 6, c ? c : 0xffff);
        }
        tx_send(t, 14 + tot);
        udp++;
    } else {
        dropped++;
    }
}

static void parse_ip(void)
{
    static const u8 def[4] = { 10, 0, 2, 15 };
    const char *v = cmdline_get("ip", 0);
    memcpy(ip, def, 4);
    if (!v)
        return;
    for (int i = 0; i < 4; i++) {
        u64 x = parse_u64(v);
        while (*v >= '0' && *v <= '9')
            v++;
        if (x > 255 || (i < 3 && *v != '.'))
            fail("net", "detail=bad_ip");
        ip[i] = (u8)x;
        v++;
    }
}

static void progress(void)
{
    out_line("@net-progress rx=%lu tx=%lu arp=%lu icmp=%lu udp=%lu drop=%lu irqs=%lu rx_kicks=%lu tx_kicks=%lu",
             rx, tx, arp, icmp, udp, dropped, dev.irqs, rxq->kicks, txq->kicks);
}

NORETURN void net_workload(void)
{
    if (!virtio_find(VIRTIO_ID_NET, (int)cmdline_u64("net_dev", 0), &dev))
        fail("net", "detail=no_device");
    parse_ip();
    virtio_negotiate(&dev, 1ul << F_MAC, "net");
    rxq = virtio_queue(&dev, 0, 256, "net");
    txq = virtio_queue(&dev, 1, 256, "net");
    rxbuf = heap_alloc((u64)rxq->num * BUF_SIZE, 4096);
    txbuf = heap_alloc((u64)txq->num * BUF_SIZE, 4096);
    tx_free = heap_alloc(2ul * txq->num, 64);
    for (u16 i = 0; i < txq->num; i++)
        tx_free[ntx_free++] = (u16)(txq->num - 1 - i);
    if (dev.features & (1ul << F_MAC)) {
        for (int i = 0; i < 6; i++)
            mac[i] = (u8)virtio_cfg8(&dev, (u32)i);
    } else {
        static const u8 def[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };
        memcpy(mac, def, 6);
    }
    virtio_ready(&dev);
    for (u16 i = 0; i < rxq->num; i++)
        rx_post(i);
    virtq_kick(rxq);
    out_line("@net mac=%02x:%02x:%02x:%02x:%02x:%02x ip=%u.%u.%u.%u rxq=%u txq=%u", mac[0], mac[1],
             mac[2], mac[3], mac[4], mac[5], ip[0], ip[1], ip[2], ip[3], rxq->num, txq->num);
    u64 limit = cmdline_u64("net_n", 0), every = seconds_to_cycles(cmdline_u64("net_report_s", 2));
    u64 last_print = rdtsc(), printed_rx = 0;
    for (;;) {
        u32 id, len;
        int got = 0;
        while (virtq_pop(rxq, &id, &len)) {
            got = 1;
            if (id >= rxq->num)
                fail("net", "detail=bad_used_id id=%u", id);
            rx++;
            if (len > HDR_LEN + 14 && len <= BUF_SIZE) {
                const u8 *f = rxbuf + (u64)id * BUF_SIZE + HDR_LEN;
                u32 flen = len - HDR_LEN;
                u16 type = get16(f + 12);
                if (type == ETH_ARP)
                    handle_arp(f, flen);
                else if (type == ETH_IP)
                    handle_ip(f, flen);
                else
                    dropped++;
            } else {
                dropped++;
            }
            rx_post((u16)id);
            if (limit && rx >= limit)
                break;
        }
        virtq_kick(txq);
        virtq_kick(rxq);
        tx_reclaim();
        if (limit && rx >= limit) {
            for (u64 t0 = rdtsc(); ntx_free < txq->num && rdtsc() - t0 < seconds_to_cycles(5);)
                tx_reclaim();
            progress();
            out_line("@done ok");
            poweroff(0);
        }
        if (rx != printed_rx && rdtsc() - last_print > every) {
            progress();
            printed_rx = rx;
            last_print = rdtsc();
        }
        if (!got && !virtio_wait(&dev, every))
            continue;
    }
}
