/* gguf.c -- see gguf.h. Every read is bounds-checked against len: a header cut short gives 0, never a read past. */
#include "gguf.h"

#include <string.h>

#define MAX_DEPTH 4 /* arrays of arrays: more is refused */
#define TRUNCATED 0
#define T_STRING 8
#define T_ARRAY 9

typedef struct {
    const uint8_t *buf;
    uint64_t len, pos;
} Cursor;

static int take(Cursor *c, uint64_t n)
{
    if (n > c->len - c->pos)
        return 0;
    c->pos += n;
    return 1;
}

static int u32(Cursor *c, uint32_t *v)
{
    if (c->len - c->pos < 4)
        return 0;
    *v = (uint32_t)c->buf[c->pos] | (uint32_t)c->buf[c->pos + 1] << 8 | (uint32_t)c->buf[c->pos + 2] << 16 |
         (uint32_t)c->buf[c->pos + 3] << 24;
    c->pos += 4;
    return 1;
}

static int u64(Cursor *c, uint64_t *v)
{
    uint32_t lo, hi;
    if (c->len - c->pos < 8 || !u32(c, &lo) || !u32(c, &hi))
        return 0;
    *v = (uint64_t)hi << 32 | lo;
    return 1;
}

/* bytes of one value of a fixed-size type; 0 for strings, arrays and unknown types */
static uint64_t scalar_size(uint32_t type)
{
    static const uint8_t size[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return type < 13 ? size[type] : 0;
}

/* 1: skipped; 0: truncated; SKV_ERR_CORRUPT: not GGUF */
static int skip_value(Cursor *c, uint32_t type, int depth)
{
    uint64_t n;
    if (scalar_size(type))
        return take(c, scalar_size(type));
    if (type == T_STRING)
        return u64(c, &n) && take(c, n);
    if (type != T_ARRAY || depth >= MAX_DEPTH)
        return SKV_ERR_CORRUPT;
    uint32_t item;
    if (!u32(c, &item) || !u64(c, &n))
        return 0;
    if (scalar_size(item))
        return n <= (c->len - c->pos) / scalar_size(item) && take(c, n * scalar_size(item));
    if (item != T_STRING && item != T_ARRAY)
        return SKV_ERR_CORRUPT;
    for (uint64_t i = 0; i < n; i++) { /* each item takes 8 bytes or more: a huge n runs out of buf */
        int rc = skip_value(c, item, depth + 1);
        if (rc != 1)
            return rc;
    }
    return 1;
}

int64_t gguf_header_length(const uint8_t *buf, int64_t len)
{
    Cursor c = {buf, len > 0 ? (uint64_t)len : 0, 0};
    uint32_t version, type, n_dims;
    uint64_t n_tensors, n_kv, n;
    if (c.len < 4)
        return TRUNCATED;
    if (memcmp(buf, "GGUF", 4))
        return SKV_ERR_CORRUPT;
    c.pos = 4;
    if (!u32(&c, &version) || !u64(&c, &n_tensors) || !u64(&c, &n_kv))
        return TRUNCATED;
    for (uint64_t i = 0; i < n_kv; i++) {
        if (!u64(&c, &n) || !take(&c, n) || !u32(&c, &type))
            return TRUNCATED;
        int rc = skip_value(&c, type, 0);
        if (rc != 1)
            return rc;
    }
    for (uint64_t i = 0; i < n_tensors; i++) { /* name, dims, type, offset */
        if (!u64(&c, &n) || !take(&c, n) || !u32(&c, &n_dims))
            return TRUNCATED;
        if (n_dims > 16)
            return SKV_ERR_CORRUPT;
        if (!take(&c, 8ull * n_dims + 4 + 8))
            return TRUNCATED;
    }
    return (int64_t)c.pos;
}
