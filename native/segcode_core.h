/*
 * segcode_core.h -- the per-segment core of the segment coder (see segcode.h), header-only, shared
 * verbatim by the CPU build (cffi, segcode.c) and the CUDA kernels (segcode_cuda.cu, nvcc or NVRTC).
 *
 * Only 32-bit integer arithmetic (plus one IEEE float multiply in quantize / dequantize), no libc, no
 * allocation: every function works on caller-given memory, so the same source runs as a CPU function, a
 * GPU thread, or a GPU thread emulated on the host.
 *
 * One segment is a block of h <= SEGC_CELLS rows (cells) by w <= SEGC_CHANNELS columns (channels) of int32
 * indices in [-SEGC_MAX_ABS, SEGC_MAX_ABS]. Its coded body is:
 *   table   bit-packed static frequencies (LSB-first, padded to a byte):
 *           5 bits n_used - 1; then for symbols 0 .. n_used - 2 a 4-bit length b of the frequency f
 *           (0: f = 0, 1: f = 1, b >= 2: b - 1 more bits below f's leading one); the last symbol has
 *           the rest of 2^SEGC_SCALE_BITS, at least 1.
 *   states  SEGC_LANES u32 little-endian initial decoder states (lane 0 first), absent when the table
 *           gives one literal symbol probability one (a constant segment);
 *   words   u16 little-endian renormalisation words, shared by the lanes in decoding order.
 * Value i of the segment in row-major order (i = row * w + column) is coded by lane i % SEGC_LANES.
 * The lanes share one word stream; the decoder takes the values in groups of SEGC_LANES consecutive
 * ones, in two passes per group: every lane's symbol (and its renormalisation word, lane order), then
 * every escaped lane's raw bits (and word, lane order). So a warp of SEGC_LANES threads can decode a
 * group in two steps, each locating its words with one ballot and a prefix count. Symbols: zigzag z of the index; z < SEGC_LITERALS is its own symbol, a larger z of bit length
 * e + 1 is symbol SEGC_LITERALS + e - 4 followed by its e low bits, raw. rANS: 32-bit states in
 * [2^16, 2^32), 16-bit renormalisation, frequencies at scale 2^SEGC_SCALE_BITS.
 */
#ifndef SEQKV_SEGCODE_CORE_H
#define SEQKV_SEGCODE_CORE_H

#if defined(__CUDACC_RTC__)
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef int int32_t;
typedef unsigned long long uint64_t;
typedef long long int64_t;
#else
#include <stdint.h>
#endif
#include "status.h"

#if defined(__CUDACC__)
#define SEGC_FN static __host__ __device__ inline
#else
#define SEGC_FN static inline
#endif

#define SEGC_CHANNELS 64
#define SEGC_CELLS 256
#define SEGC_LANES 32
#define SEGC_SCALE_BITS 12
#define SEGC_TOTFREQ (1u << SEGC_SCALE_BITS)
#define SEGC_MAX_ABS 32767
#define SEGC_LITERALS 16
#define SEGC_NSYM 28 /* 16 literals + bit lengths 5 .. 16 of zigzag values up to 65534 */
#define SEGC_RANS_L (1u << 16)
#define SEGC_BUCKET_SHIFT 6 /* slot >> 6: 64 buckets that start the symbol search */
#define SEGC_TABLE_MAX 64   /* bytes: 5 + 27 * (4 + 11) bits at most */
/* a segment body at most: table, states, and two words per value (symbol + raw bits) */
#define SEGC_SEGMENT_BOUND (SEGC_TABLE_MAX + 4 * SEGC_LANES + 4 * SEGC_CELLS * SEGC_CHANNELS)


/* ---- symbols ---------------------------------------------------------------------------------------- */

SEGC_FN uint32_t segc_zigzag(int32_t v)
{
    return v < 0 ? ((uint32_t)(-(v + 1)) << 1) | 1u : (uint32_t)v << 1;
}

SEGC_FN int32_t segc_unzigzag(uint32_t z)
{
    return (z & 1u) ? -(int32_t)(z >> 1) - 1 : (int32_t)(z >> 1);
}

/* symbol of a zigzag value z <= 65534, and the count of raw bits that follow it */
SEGC_FN uint32_t segc_symbol(uint32_t z, uint32_t *n_raw)
{
    if (z < SEGC_LITERALS) {
        *n_raw = 0;
        return z;
    }
    uint32_t e = 4;
    while (z >> (e + 1))
        e++;
    *n_raw = e;
    return SEGC_LITERALS + e - 4;
}

/* ---- bits of the table -------------------------------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    uint32_t acc, n;
} SegcBitWriter;

SEGC_FN void segc_put_bits(SegcBitWriter *w, uint32_t v, uint32_t n_bits)
{
    w->acc |= v << w->n;
    w->n += n_bits;
    while (w->n >= 8) {
        *w->p++ = (uint8_t)w->acc;
        w->acc >>= 8;
        w->n -= 8;
    }
}

typedef struct {
    const uint8_t *p, *end;
    uint32_t acc, n;
    int err;
} SegcBitReader;

SEGC_FN uint32_t segc_get_bits(SegcBitReader *r, uint32_t n_bits)
{
    while (r->n < n_bits) {
        if (r->p < r->end)
            r->acc |= (uint32_t)*r->p++ << r->n;
        else
            r->err = 1;
        r->n += 8;
    }
    uint32_t v = r->acc & ((1u << n_bits) - 1u);
    r->acc >>= n_bits;
    r->n -= n_bits;
    return v;
}

SEGC_FN uint32_t segc_bit_length(uint32_t v)
{
    uint32_t b = 0;
    while (v >> b)
        b++;
    return b;
}

/* ---- frequency tables ----------------------------------------------------------------------------------- */

/* Counts to frequencies summing to SEGC_TOTFREQ, every used symbol >= 1, integer only. Returns n_used. */
SEGC_FN uint32_t segc_normalize(const uint32_t *count, uint32_t total, uint32_t *freq)
{
    uint32_t n_used = 0, sum = 0, s;
    for (s = 0; s < SEGC_NSYM; s++) {
        uint32_t f = 0;
        if (count[s]) {
            f = (uint32_t)(((uint64_t)count[s] << SEGC_SCALE_BITS) / total);
            f = f ? f : 1u;
            n_used = s + 1;
        }
        freq[s] = f;
        sum += f;
    }
    while (sum > SEGC_TOTFREQ) { /* forced ones overshot: take from the largest (lowest index on ties) */
        uint32_t best = 0;
        for (s = 1; s < n_used; s++)
            best = freq[s] > freq[best] ? s : best;
        freq[best]--;
        sum--;
    }
    if (sum < SEGC_TOTFREQ) { /* rounding shortfall goes to the most frequent symbol */
        uint32_t best = 0;
        for (s = 1; s < n_used; s++)
            best = count[s] > count[best] ? s : best;
        freq[best] += SEGC_TOTFREQ - sum;
    }
    /* the table leaves the last symbol's frequency implicit: it must be the used one with the highest index */
    return n_used;
}

/* Table bytes at out (at most SEGC_TABLE_MAX). */
SEGC_FN uint32_t segc_write_table(const uint32_t *freq, uint32_t n_used, uint8_t *out)
{
    SegcBitWriter w = {out, 0, 0};
    segc_put_bits(&w, n_used - 1, 5);
    for (uint32_t s = 0; s + 1 < n_used; s++) {
        uint32_t b = segc_bit_length(freq[s]);
        segc_put_bits(&w, b, 4);
        if (b >= 2)
            segc_put_bits(&w, freq[s] & ((1u << (b - 1)) - 1u), b - 1);
    }
    if (w.n)
        segc_put_bits(&w, 0, 8 - w.n);
    return (uint32_t)(w.p - out);
}

/* Decoder tables of one segment. */
typedef struct {
    uint32_t n_used;
    uint32_t freq[SEGC_NSYM];
    uint32_t cum[SEGC_NSYM + 1];
    uint8_t bucket[SEGC_TOTFREQ >> SEGC_BUCKET_SHIFT];
} SegcTable;

/* Parses and validates a table; returns its byte length or SKV_ERR_CORRUPT. */
SEGC_FN int32_t segc_read_table(const uint8_t *in, uint32_t size, SegcTable *t)
{
    SegcBitReader r = {in, in + size, 0, 0, 0};
    uint32_t n_used = segc_get_bits(&r, 5) + 1, sum = 0, s;
    if (n_used > SEGC_NSYM)
        return SKV_ERR_CORRUPT;
    for (s = 0; s + 1 < n_used; s++) {
        uint32_t b = segc_get_bits(&r, 4), f;
        if (b > SEGC_SCALE_BITS)
            return SKV_ERR_CORRUPT;
        f = b >= 2 ? (1u << (b - 1)) | segc_get_bits(&r, b - 1) : b;
        t->freq[s] = f;
        sum += f;
        if (sum >= SEGC_TOTFREQ)
            return SKV_ERR_CORRUPT;
    }
    if (r.err)
        return SKV_ERR_CORRUPT;
    t->freq[n_used - 1] = SEGC_TOTFREQ - sum;
    t->n_used = n_used;
    t->cum[0] = 0;
    for (s = 0; s < n_used; s++)
        t->cum[s + 1] = t->cum[s] + t->freq[s];
    s = 0;
    for (uint32_t b = 0; b < (SEGC_TOTFREQ >> SEGC_BUCKET_SHIFT); b++) {
        uint32_t slot = b << SEGC_BUCKET_SHIFT;
        while (t->cum[s + 1] <= slot)
            s++;
        t->bucket[b] = (uint8_t)s;
    }
    return (int32_t)(r.p - in);
}

/* ---- rANS, 32-bit states, 16-bit words ---------------------------------------------------------------- */

SEGC_FN void segc_enc_put(uint32_t *x, uint8_t **pp, uint32_t start, uint32_t freq)
{
    uint32_t v = *x;
    if ((v >> (32 - SEGC_SCALE_BITS)) >= freq) { /* v >= freq * 2^20: one word goes out first */
        *pp -= 2;
        (*pp)[0] = (uint8_t)v;
        (*pp)[1] = (uint8_t)(v >> 8);
        v >>= 16;
    }
    *x = ((v / freq) << SEGC_SCALE_BITS) + (v % freq) + start;
}

SEGC_FN void segc_enc_put_raw(uint32_t *x, uint8_t **pp, uint32_t bits, uint32_t n_bits)
{
    uint32_t v = *x;
    if (v >> (32 - n_bits)) {
        *pp -= 2;
        (*pp)[0] = (uint8_t)v;
        (*pp)[1] = (uint8_t)(v >> 8);
        v >>= 16;
    }
    *x = (v << n_bits) | bits;
}

/* ---- one segment -------------------------------------------------------------------------------------- */

/* Geometry of segment seg of an [n_cells, n_channels] tensor: first cell and channel, rows and columns. */
SEGC_FN void segc_segment_geometry(uint32_t n_cells, uint32_t n_channels, uint32_t seg, uint32_t *cell0,
                                   uint32_t *ch0, uint32_t *h, uint32_t *w)
{
    uint32_t n_chblocks = (n_channels + SEGC_CHANNELS - 1) / SEGC_CHANNELS;
    *cell0 = (seg / n_chblocks) * SEGC_CELLS;
    *ch0 = (seg % n_chblocks) * SEGC_CHANNELS;
    *h = n_cells - *cell0 < SEGC_CELLS ? n_cells - *cell0 : SEGC_CELLS;
    *w = n_channels - *ch0 < SEGC_CHANNELS ? n_channels - *ch0 : SEGC_CHANNELS;
}

/*
 * Codes the h x w block at q (row stride `stride` values) into slot (SEGC_SEGMENT_BOUND bytes, used as
 * scratch: words are written backwards from its end, then moved down behind the table).
 * Returns the body's byte count, or SKV_ERR_UNSUPPORTED when an index is outside +-SEGC_MAX_ABS.
 */
SEGC_FN int32_t segc_encode_block(const int32_t *q, uint32_t stride, uint32_t h, uint32_t w, uint8_t *slot)
{
    uint32_t count[SEGC_NSYM], freq[SEGC_NSYM], cum[SEGC_NSYM + 1], x[SEGC_LANES];
    uint32_t r, k, s, n_raw;
    for (s = 0; s < SEGC_NSYM; s++)
        count[s] = 0;
    for (r = 0; r < h; r++)
        for (k = 0; k < w; k++) {
            int32_t v = q[(uint64_t)r * stride + k];
            if (v > SEGC_MAX_ABS || v < -SEGC_MAX_ABS)
                return SKV_ERR_UNSUPPORTED;
            count[segc_symbol(segc_zigzag(v), &n_raw)]++;
        }
    uint32_t n_used = segc_normalize(count, h * w, freq);
    uint32_t table_len = segc_write_table(freq, n_used, slot);
    if (freq[n_used - 1] == SEGC_TOTFREQ && n_used - 1 < SEGC_LITERALS)
        return (int32_t)table_len; /* constant segment: the table says it all */
    cum[0] = 0;
    for (s = 0; s < n_used; s++)
        cum[s + 1] = cum[s] + freq[s];
    for (s = 0; s < SEGC_LANES; s++)
        x[s] = SEGC_RANS_L;
    uint8_t *end = slot + SEGC_SEGMENT_BOUND, *p = end;
    uint32_t n = h * w, base = (n - 1) / SEGC_LANES * SEGC_LANES, z[SEGC_LANES], j;
    for (;; base -= SEGC_LANES) { /* groups last to first, each in the reverse of the decoder's two passes */
        uint32_t m = n - base < SEGC_LANES ? n - base : SEGC_LANES;
        r = base / w;
        k = base % w;
        for (j = 0; j < m; j++) {
            z[j] = segc_zigzag(q[(uint64_t)r * stride + k]);
            if (++k == w) {
                k = 0;
                r++;
            }
        }
        for (j = m; j-- > 0;) {
            s = segc_symbol(z[j], &n_raw);
            if (n_raw)
                segc_enc_put_raw(&x[j], &p, z[j] & ((1u << n_raw) - 1u), n_raw);
        }
        for (j = m; j-- > 0;) {
            s = segc_symbol(z[j], &n_raw);
            segc_enc_put(&x[j], &p, cum[s], freq[s]);
        }
        if (base == 0)
            break;
    }
    for (s = SEGC_LANES; s-- > 0;) {
        p -= 4;
        p[0] = (uint8_t)x[s];
        p[1] = (uint8_t)(x[s] >> 8);
        p[2] = (uint8_t)(x[s] >> 16);
        p[3] = (uint8_t)(x[s] >> 24);
    }
    uint32_t body = (uint32_t)(end - p);
    for (j = 0; j < body; j++) /* forward copy: the destination lies below the source */
        slot[table_len + j] = p[j];
    return (int32_t)(table_len + body);
}

/*
 * Decodes a segment body of `size` bytes into the h x w block at q (row stride `stride`). Reads nothing
 * outside [body, body + size); returns SKV_OK, or SKV_ERR_CORRUPT when the body is malformed, runs short,
 * has bytes left over or its lanes do not end in their initial state.
 */
SEGC_FN int32_t segc_decode_block(const uint8_t *body, uint32_t size, uint32_t h, uint32_t w, int32_t *q,
                                  uint32_t stride)
{
    SegcTable t;
    uint32_t x[SEGC_LANES], r, k, s;
    int32_t table_len = segc_read_table(body, size, &t);
    if (table_len < 0)
        return table_len;
    if (t.freq[t.n_used - 1] == SEGC_TOTFREQ && t.n_used - 1 < SEGC_LITERALS) {
        int32_t v = segc_unzigzag(t.n_used - 1);
        if ((uint32_t)table_len != size)
            return SKV_ERR_CORRUPT;
        for (r = 0; r < h; r++)
            for (k = 0; k < w; k++)
                q[(uint64_t)r * stride + k] = v;
        return SKV_OK;
    }
    if (size - (uint32_t)table_len < 4 * SEGC_LANES)
        return SKV_ERR_CORRUPT;
    const uint8_t *p = body + table_len, *end = body + size;
    for (s = 0; s < SEGC_LANES; s++, p += 4) {
        x[s] = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
        if (x[s] < SEGC_RANS_L)
            return SKV_ERR_CORRUPT;
    }
    uint32_t n = h * w, base, j, sym[SEGC_LANES];
    r = k = 0;
    for (base = 0; base < n; base += SEGC_LANES) {
        uint32_t m = n - base < SEGC_LANES ? n - base : SEGC_LANES;
        for (j = 0; j < m; j++) { /* pass 1: the group's symbols, lane by lane */
            uint32_t v = x[j];
            uint32_t slot = v & (SEGC_TOTFREQ - 1u);
            s = t.bucket[slot >> SEGC_BUCKET_SHIFT];
            while (t.cum[s + 1] <= slot)
                s++;
            v = t.freq[s] * (v >> SEGC_SCALE_BITS) + slot - t.cum[s];
            if (v < SEGC_RANS_L) {
                if (end - p < 2)
                    return SKV_ERR_CORRUPT;
                v = (v << 16) | (uint32_t)p[0] | ((uint32_t)p[1] << 8);
                p += 2;
            }
            x[j] = v;
            sym[j] = s;
        }
        for (j = 0; j < m; j++) { /* pass 2: raw bits of the escaped ones, lane by lane */
            uint32_t z = sym[j];
            if (z >= SEGC_LITERALS) {
                uint32_t e = z - SEGC_LITERALS + 4, v = x[j];
                z = (1u << e) | (v & ((1u << e) - 1u));
                v >>= e;
                if (v < SEGC_RANS_L) {
                    if (end - p < 2)
                        return SKV_ERR_CORRUPT;
                    v = (v << 16) | (uint32_t)p[0] | ((uint32_t)p[1] << 8);
                    p += 2;
                }
                if (z > 2u * SEGC_MAX_ABS)
                    return SKV_ERR_CORRUPT;
                x[j] = v;
            }
            q[(uint64_t)r * stride + k] = segc_unzigzag(z);
            if (++k == w) {
                k = 0;
                r++;
            }
        }
    }
    if (p != end)
        return SKV_ERR_CORRUPT;
    for (s = 0; s < SEGC_LANES; s++)
        if (x[s] != SEGC_RANS_L)
            return SKV_ERR_CORRUPT;
    return SKV_OK;
}

/* ---- quantization: one IEEE float32 multiply, then exact integer rounding (ties away from zero) ------- */

SEGC_FN int32_t segc_quantize_value(float x, float inv_step)
{
    float y = x * inv_step;
    if (!(y == y))
        return 0; /* NaN */
    if (y >= (float)SEGC_MAX_ABS)
        return SEGC_MAX_ABS;
    if (y <= -(float)SEGC_MAX_ABS)
        return -SEGC_MAX_ABS;
    int32_t t = (int32_t)y;       /* exact truncation: |y| < 2^15 */
    float frac = y - (float)t;    /* exact: y and t share sign and exponent range */
    return t + (frac >= 0.5f) - (frac <= -0.5f);
}

SEGC_FN float segc_dequantize_value(int32_t q, float step)
{
    return (float)q * step; /* exact conversion (|q| < 2^24), one rounded multiply */
}

/* ---- the stream around the segments (segcode.h) ----------------------------------------------------- */

#define SEGC_MAGIC 0x31434753u /* "SGC1" */
#define SEGC_VERSION 1
#define SEGC_HEADER_SIZE 16

SEGC_FN uint32_t segc_load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

SEGC_FN void segc_store_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

SEGC_FN uint64_t segc_segment_total(uint32_t n_cells, uint32_t n_channels)
{
    return (uint64_t)((n_cells + (uint64_t)SEGC_CELLS - 1) / SEGC_CELLS) *
           ((n_channels + (uint64_t)SEGC_CHANNELS - 1) / SEGC_CHANNELS);
}

SEGC_FN void segc_write_header(uint8_t *dst, uint32_t n_cells, uint32_t n_channels)
{
    segc_store_le32(dst, SEGC_MAGIC);
    dst[4] = SEGC_VERSION;
    dst[5] = dst[6] = dst[7] = 0;
    segc_store_le32(dst + 8, n_cells);
    segc_store_le32(dst + 12, n_channels);
}

SEGC_FN int32_t segc_read_header(const uint8_t *src, int64_t src_len, uint32_t *n_cells, uint32_t *n_channels)
{
    if (src_len < SEGC_HEADER_SIZE)
        return SKV_ERR_CORRUPT;
    if (segc_load_le32(src) != SEGC_MAGIC || src[4] != SEGC_VERSION || src[5] || src[6] || src[7])
        return SKV_ERR_CORRUPT;
    *n_cells = segc_load_le32(src + 8);
    *n_channels = segc_load_le32(src + 12);
    return SKV_OK;
}

/* Byte offset of every segment body (n_segments + 1 entries: the last is the stream's size) of a stream
 * that must describe an n_cells x n_channels tensor; returns that size or a negative error. */
SEGC_FN int64_t segc_parse_offsets(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                                   uint64_t *offsets)
{
    uint32_t got_cells, got_channels;
    uint64_t n_seg = segc_segment_total(n_cells, n_channels), s, at = SEGC_HEADER_SIZE + 4 * n_seg;
    int32_t rc = segc_read_header(src, src_len, &got_cells, &got_channels);
    if (n_seg == 0)
        return SKV_ERR_ARGUMENT;
    if (rc != SKV_OK)
        return rc;
    if (got_cells != n_cells || got_channels != n_channels)
        return SKV_ERR_MISMATCH;
    if ((uint64_t)src_len < at)
        return SKV_ERR_CORRUPT;
    for (s = 0; s < n_seg; s++) {
        uint32_t size = segc_load_le32(src + SEGC_HEADER_SIZE + 4 * s);
        if (size == 0 || size > SEGC_SEGMENT_BOUND || at + size > (uint64_t)src_len)
            return SKV_ERR_CORRUPT;
        offsets[s] = at;
        at += size;
    }
    offsets[n_seg] = at;
    return (int64_t)at;
}

#endif /* SEQKV_SEGCODE_CORE_H */
