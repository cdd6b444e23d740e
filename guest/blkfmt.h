/* blkfmt.h: the self-describing test block (blkfmt.c; format in README.md "Block format"). */
#ifndef BLKFMT_H
#define BLKFMT_H
#include "guest.h"

#define BLK_HDR_SIZE 32
struct blk_hdr {
    char magic[4];      /* "TSVB" */
    u32 crc;            /* CRC32 (IEEE) of the whole block with this field zero */
    u64 sector;         /* 512-byte sector number of the block's first byte */
    u64 gen;            /* generation */
    u32 bs;             /* block size in bytes */
    u32 reserved;       /* 0 */
};

u32 crc32(const u8 *p, u64 n);
u32 blk_seed(u64 sector, u64 gen);
void blk_fill(u8 *b, u32 bs, u64 sector, u64 gen);
const char *blk_check(u8 *b, u32 bs, u64 sector, u64 gen);  /* 0 if good, else what is wrong */
#endif
