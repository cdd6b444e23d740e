/* blkfmt.c: the self-describing block the blk workload writes (format in README.md, "Block
 * format"; test/helpers/blk-image.ts checks it on the host): a 32-byte header (magic "TSVB",
 * CRC32, sector, generation, block size) and a payload of xorshift32 words seeded from
 * (sector, generation). CRC32 is IEEE (reflected 0xEDB88320, init/xorout 0xFFFFFFFF), slice-by-8. */
#include "blkfmt.h"

static u32 crc_tab[8][256];

static void crc_init(void)
{
    for (u32 i = 0; i < 256; i++) {
        u32 c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tab[0][i] = c;
    }
    for (u32 i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xff];
}

u32 crc32(const u8 *p, u64 n)
{
    if (!crc_tab[0][1])
        crc_init();
    u32 c = 0xffffffffu;
    for (; n && ((u64)p & 7); n--)
        c = crc_tab[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    for (; n >= 8; n -= 8, p += 8) {
        u32 a = *(const u32 *)p ^ c, b = *(const u32 *)(p + 4);
        c = crc_tab[7][a & 0xff] ^ crc_tab[6][(a >> 8) & 0xff] ^ crc_tab[5][(a >> 16) & 0xff] ^
            crc_tab[4][a >> 24] ^ crc_tab[3][b & 0xff] ^ crc_tab[2][(b >> 8) & 0xff] ^
            crc_tab[1][(b >> 16) & 0xff] ^ crc_tab[0][b >> 24];
    }
    for (; n; n--)
        c = crc_tab[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

static u32 fmix32(u32 h)
{
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

u32 blk_seed(u64 sector, u64 gen)
{
    u32 x = fmix32((u32)sector ^ fmix32((u32)(sector >> 32) ^
                   fmix32((u32)gen ^ fmix32((u32)(gen >> 32) ^ 0x9E3779B9u))));
    return x ? x : 1;
}

void blk_fill(u8 *b, u32 bs, u64 sector, u64 gen)
{
    struct blk_hdr *h = (struct blk_hdr *)b;
    memcpy(h->magic, "TSVB", 4);
    h->crc = 0;
    h->sector = sector;
    h->gen = gen;
    h->bs = bs;
    h->reserved = 0;
    u32 x = blk_seed(sector, gen);
    u32 *w = (u32 *)(b + BLK_HDR_SIZE);
    for (u32 i = 0; i < (bs - BLK_HDR_SIZE) / 4; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        w[i] = x;
    }
    h->crc = crc32(b, bs);
}

const char *blk_check(u8 *b, u32 bs, u64 sector, u64 gen)
{
    struct blk_hdr *h = (struct blk_hdr *)b;
    if (memcmp(h->magic, "TSVB", 4))
        return "magic";
    if (h->sector != sector)
        return "sector";
    if (h->gen != gen)
        return "gen";
    if (h->bs != bs)
        return "bs";
    u32 crc = h->crc;
    h->crc = 0;
    u32 c = crc32(b, bs);
    h->crc = crc;
    if (c != crc)
        return "crc";
    u32 x = blk_seed(sector, gen);
    const u32 *w = (const u32 *)(b + BLK_HDR_SIZE);
    for (u32 i = 0; i < (bs - BLK_HDR_SIZE) / 4; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if (w[i] != x)
            return "payload";
    }
    return 0;
}
