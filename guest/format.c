/* format.c: a small printf-style formatter (%s %c %d %u %x, 'l' for 64-bit, '0' + width) and
 * the string helpers gcc may call (memcpy/memset/memcmp). */
#include "guest.h"

struct sink { char *buf; int size, len; };

static void put(struct sink *s, char c)
{
    if (s->len < s->size - 1)
        s->buf[s->len] = c;
    s->len++;
}

static void put_num(struct sink *s, u64 v, int base, int width, char pad, int neg)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    if (neg)
        tmp[n++] = '-';
    while (width-- > n)
        put(s, pad);
    while (n)
        put(s, tmp[--n]);
}

int vformat(char *buf, int size, const char *fmt, va_list ap)
{
    struct sink s = { buf, size, 0 };
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(&s, *fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, lng = 0;
        if (*fmt == '0')
            pad = '0', fmt++;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l')
            lng = 1, fmt++;
        switch (*fmt) {
        case 's': {
            const char *str = va_arg(ap, const char *);
            while (str && *str)
                put(&s, *str++);
            break;
        }
        case 'c':
            put(&s, (char)va_arg(ap, int));
            break;
        case 'd': {
            i64 v = lng ? va_arg(ap, i64) : va_arg(ap, int);
            put_num(&s, v < 0 ? -(u64)v : (u64)v, 10, width, pad, v < 0);
            break;
        }
        case 'u':
        case 'x': {
            u64 v = lng ? va_arg(ap, u64) : va_arg(ap, u32);
            put_num(&s, v, *fmt == 'x' ? 16 : 10, width, pad, 0);
            break;
        }
        case '%':
            put(&s, '%');
            break;
        default:
            put(&s, '?');
            if (!*fmt)
                fmt--;
        }
    }
    if (size > 0)
        buf[s.len < size ? s.len : size - 1] = 0;
    return s.len < size ? s.len : size - 1;
}

int format(char *buf, int size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vformat(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

void *memcpy(void *d, const void *s, unsigned long n)
{
    u8 *dp = d;
    const u8 *sp = s;
    while (n--)
        *dp++ = *sp++;
    return d;
}

void *memset(void *d, int c, unsigned long n)
{
    u8 *dp = d;
    while (n--)
        *dp++ = (u8)c;
    return d;
}

int memcmp(const void *a, const void *b, unsigned long n)
{
    const u8 *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}

unsigned long strlen(const char *s)
{
    unsigned long n = 0;
    while (s[n])
        n++;
    return n;
}

/* If s starts with "key=", sets *val to what follows and returns 1. */
int key_match(const char *s, const char *key, const char **val)
{
    while (*key)
        if (*s++ != *key++)
            return 0;
    if (*s != '=')
        return 0;
    *val = s + 1;
    return 1;
}

/* Decimal, or hex with 0x; stops at the first other character. */
u64 parse_u64(const char *s)
{
    u64 v = 0;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        for (s += 2;; s++) {
            int d = (*s >= '0' && *s <= '9') ? *s - '0'
                  : (*s >= 'a' && *s <= 'f') ? *s - 'a' + 10
                  : (*s >= 'A' && *s <= 'F') ? *s - 'A' + 10 : -1;
            if (d < 0)
                return v;
            v = v * 16 + d;
        }
    }
    for (; *s >= '0' && *s <= '9'; s++)
        v = v * 10 + (*s - '0');
    return v;
}
