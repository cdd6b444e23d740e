/* cmdline.c: key lookups in the boot command line (space-separated key=value; a value ends at a
 * space), size parsing for virtio_mmio.device= entries, and a bump allocator over the free RAM
 * above the image (boot.heap_start..heap_end, identity-mapped, user-accessible). */
#include "guest.h"

/* Value of the nth (0-based) "key=" on the command line, or 0. */
const char *cmdline_get(const char *key, int nth)
{
    const char *v;
    for (const char *p = boot.cmdline; p && *p;) {
        while (*p == ' ')
            p++;
        if (key_match(p, key, &v) && nth-- == 0)
            return v;
        while (*p && *p != ' ')
            p++;
    }
    return 0;
}

u64 cmdline_u64(const char *key, u64 def)
{
    const char *v = cmdline_get(key, 0);
    return v ? parse_u64(v) : def;
}

int word_eq(const char *v, const char *word)
{
    while (*word && *v == *word)
        v++, word++;
    return !*word && (!*v || *v == ' ');
}

int cmdline_is(const char *key, const char *word, int def)
{
    const char *v = cmdline_get(key, 0);
    return v ? word_eq(v, word) : def;
}

/* "4K", "0x1000", "512", "1M", "1G"; *end (if given) is set past the number and suffix. */
u64 parse_size(const char *s, const char **end)
{
    u64 v = parse_u64(s);
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        while ((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f') || (*s >= 'A' && *s <= 'F'))
            s++;
    } else {
        while (*s >= '0' && *s <= '9')
            s++;
    }
    if (*s == 'k' || *s == 'K')
        v <<= 10, s++;
    else if (*s == 'm' || *s == 'M')
        v <<= 20, s++;
    else if (*s == 'g' || *s == 'G')
        v <<= 30, s++;
    if (end)
        *end = s;
    return v;
}

void *heap_alloc(u64 size, u64 align)
{
    static u64 next;
    if (!next)
        next = boot.heap_start;
    if (align < 64)
        align = 64;
    u64 p = (next + align - 1) & ~(align - 1);
    if (p + size > boot.heap_end || p + size < p)
        fail("mem", "detail=out_of_memory size=%lu heap_end=0x%lx", size, boot.heap_end);
    next = p + size;
    memset((void *)p, 0, size);
    return (void *)p;
}

u64 seconds_to_cycles(u64 s)
{
    u64 khz = boot.tsc_khz ? boot.tsc_khz : 3000000;   /* guess 3 GHz when unknown */
    return s * khz * 1000;
}
