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
    y = y == y ? y : 0.0f; /* NaN; then clamped (branch-free, so that loops vectorise) */
    y = y > (float)SEGC_MAX_ABS ? (float)SEGC_MAX_ABS : y;
    y = y < -(float)SEGC_MAX_ABS ? -(float)SEGC_MAX_ABS : y;
    int32_t t = (int32_t)y;       /* exact truncation: |y| <= 2^15 */
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

SEGC_FN void segc_write_header_version(uint8_t *dst, uint32_t n_cells, uint32_t n_channels, uint32_t version)
{
    segc_store_le32(dst, SEGC_MAGIC);
    dst[4] = (uint8_t)version;
    dst[5] = dst[6] = dst[7] = 0;
    segc_store_le32(dst + 8, n_cells);
    segc_store_le32(dst + 12, n_channels);
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
    if (segc_load_le32(src) != SEGC_MAGIC || (src[4] != SEGC_VERSION && src[4] != 2) || src[5] || src[6] || src[7])
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
    if (src[4] != SEGC_VERSION)
        return SKV_ERR_CORRUPT;
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

/* ==== format 2: per-channel static models in one table section, read by every segment ===================
 *
 * A format-2 segment is h <= SEGC2_CELLS cells x w <= SEGC2_CHANNELS channels taken column by column: value
 * i = column * h + row is coded by lane i % SEGC2_LANES with the model of its channel (so the lanes of a group
 * mostly share one model), in the group order of format 1 (pass 1: every
 * lane's symbol; pass 2: the escaped lanes' raw bits). A channel's model is lossy3's parametric family: k
 * (direct magnitudes 0 .. k - 1, an escape symbol as well when k == SEGC2_KMAX), P(0), P(1 | > 0) and a
 * geometric tail ratio, each probability an 8-bit logistic code; symbols 0, +1, -1, +2, -2, ..., escape. An
 * escape is followed by 5 raw bits (sign | length << 1) and `length` raw bits of m - SEGC2_KMAX + 1 below
 * its leading one. The models are fitted in integer arithmetic only (moment fit, then a coordinate search on
 * the exact cost in Q16 bits when the tensor has >= SEGC2_REFINE_MIN_CELLS cells), so every backend builds
 * the same tables from the same indices.
 * Table section: per channel 6 bits k - 1; if k >= 2 the code of P(0); if k >= 3 those of P(1 | > 0) and of
 * the tail ratio (LSB-first, padded to a byte).
 * Segment body: SEGC2_LANES u32 initial decoder states then the u16 words; empty when every channel of the
 * segment has k == 1 (all zeros).
 */

#define SEGC2_VERSION 2
#define SEGC2_LANES 16
#define SEGC2_CELLS 2048
#define SEGC2_CHANNELS 64
#define SEGC2_KMAX 48
#define SEGC2_NSYM (2 * SEGC2_KMAX)
#define SEGC2_HIST (SEGC2_KMAX + 1) /* magnitudes 0 .. KMAX - 1, then the escapes */
#define SEGC2_REFINE_MIN_CELLS 512
#define SEGC2_PARAM_BITS_MAX 30
/* a segment body at most: states, and three words per value (symbol, escape head, escape bits) */
#define SEGC2_SEGMENT_BOUND (4 * SEGC2_LANES + 6 * SEGC2_CELLS * SEGC2_CHANNELS)

typedef struct {
    uint32_t k;
    uint32_t u[3]; /* logistic codes of P(0), P(1 | > 0), tail ratio */
} Segc2Params;

/* statistics of a channel's indices: magnitude histogram, raw bits of the escapes */
typedef struct {
    uint32_t hist[SEGC2_HIST];
    uint64_t esc_bits;
} Segc2Stats;

/* a channel's coding table: symbol s has frequency cum[s + 1] - cum[s]; rcp[s] = 2^64 / frequency rounded
 * up (the encoder's exact division: 0 when the frequency is 1), lut[slot] the symbol a decoder slot falls in */
typedef struct {
    uint16_t cum[SEGC2_NSYM + 1];
    uint32_t k, n_sym, esc; /* esc: the escape's symbol, or SEGC2_NSYM when there is none */
    uint64_t rcp[SEGC2_NSYM];
    uint8_t lut[SEGC_TOTFREQ];
} Segc2Model;

SEGC_FN void segc2_stats_clear(Segc2Stats *s)
{
    for (uint32_t m = 0; m < SEGC2_HIST; m++)
        s->hist[m] = 0;
    s->esc_bits = 0;
}

SEGC_FN uint32_t segc2_escape_length(uint32_t m)
{
    return segc_bit_length(m - SEGC2_KMAX + 1) - 1;
}

SEGC_FN void segc2_count(Segc2Stats *s, int32_t v)
{
    uint32_t m = (uint32_t)(v < 0 ? -v : v);
    s->hist[m < SEGC2_KMAX ? m : SEGC2_KMAX]++;
    if (m >= SEGC2_KMAX)
        s->esc_bits += 5 + segc2_escape_length(m);
}

SEGC_FN void segc2_stats_add(Segc2Stats *to, const Segc2Stats *from)
{
    for (uint32_t m = 0; m < SEGC2_HIST; m++)
        to->hist[m] += from->hist[m];
    to->esc_bits += from->esc_bits;
}

/* Counts the h x w block at q (row stride `stride`) into stats[0 .. w - 1]; SKV_ERR_UNSUPPORTED when an
 * index is outside +-SEGC_MAX_ABS. */
SEGC_FN int32_t segc2_count_block(const int32_t *q, uint32_t stride, uint32_t h, uint32_t w, Segc2Stats *stats)
{
    uint32_t bad = 0;
    for (uint32_t k = 0; k < w; k++)
        segc2_stats_clear(&stats[k]);
    for (uint32_t r = 0; r < h; r++)
        for (uint32_t k = 0; k < w; k++) {
            int32_t v = q[(uint64_t)r * stride + k];
            uint32_t m = (uint32_t)(v < 0 ? -(int64_t)v : v);
            bad |= m > SEGC_MAX_ABS;
            stats[k].hist[m < SEGC2_KMAX ? m : SEGC2_KMAX]++;
            if (m >= SEGC2_KMAX && m <= SEGC_MAX_ABS)
                stats[k].esc_bits += 5 + segc2_escape_length(m);
        }
    return bad ? SKV_ERR_UNSUPPORTED : SKV_OK;
}

/* 2^24 / (1 + 2^((128 - u) / 16)): the probability (Q24) of logistic code u, integer arithmetic only */
SEGC_FN uint64_t segc2_logistic(uint32_t u)
{
    /* round(2^(i / 16) * 2^16), i = 0 .. 15 */
    const uint32_t exp2_16[16] = {65536, 68438, 71468, 74632, 77936, 81386, 84990, 88752,
                                  92682, 96785, 101070, 105545, 110218, 115098, 120194, 125515};
    int32_t j = 128 - (int32_t)u; /* -127 .. 128 */
    int32_t whole = j >= 0 ? j / 16 : -((15 - j) / 16);
    uint64_t a = exp2_16[j - 16 * whole];
    a = whole >= 0 ? a << whole : a >> -whole;
    return ((uint64_t)1 << 40) / ((uint64_t)65536 + a);
}

/* the code whose probability is nearest to p (Q24) */
SEGC_FN uint32_t segc2_code(uint64_t p)
{
    uint32_t lo = 0, hi = 255;
    while (lo < hi) { /* the first code with a probability >= p (probabilities grow with the code) */
        uint32_t mid = (lo + hi) / 2;
        if (segc2_logistic(mid) >= p)
            hi = mid;
        else
            lo = mid + 1;
    }
    if (lo > 0 && p - segc2_logistic(lo - 1) < segc2_logistic(lo) - p)
        lo--;
    return lo;
}

/* The frequencies of a model's symbols (lossy3's l3_table, integer only); returns the symbol count. */
/* The Q24 weights w[0 .. n_sym - 1] of a model's symbols: 0, then +1, -1, +2, -2, ... up to magnitude k - 1, then
 * the escape when k == SEGC2_KMAX, from the logistic codes of P(0), P(1 | > 0) and the tail ratio; returns n_sym.
 * Lossy format 3's tables (lossy3_model.c) use the same model, normalised their own way. */
SEGC_FN uint32_t segc2_weights(uint32_t k, uint32_t u0, uint32_t u1, uint32_t u2, uint64_t *w)
{
    uint32_t esc = k == SEGC2_KMAX, n_sym = 2 * k - 1 + esc;
    const uint64_t one = (uint64_t)1 << 24;
    uint64_t p0 = segc2_logistic(u0), rest = one - p0;
    w[0] = p0;
    if (k >= 2) {
        uint64_t m1 = k >= 3 || esc ? rest * segc2_logistic(u1) >> 24 : rest;
        uint64_t tail = rest - m1, ratio = segc2_logistic(u2);
        w[1] = w[2] = m1 >> 1;
        uint64_t g = tail * (one - ratio) >> 24;
        for (uint32_t m = 2; m < k; m++) {
            w[2 * m - 1] = w[2 * m] = g >> 1;
            g = g * ratio >> 24;
        }
        if (esc)
            w[n_sym - 1] = g;
    }
    return n_sym;
}

SEGC_FN uint32_t segc2_freqs(const Segc2Params *p, uint32_t *freq)
{
    uint32_t s, total = 0, best = 0;
    uint64_t w[SEGC2_NSYM], sum = 0;
    uint32_t n_sym = segc2_weights(p->k, p->u[0], p->u[1], p->u[2], w);
    for (s = 0; s < n_sym; s++)
        sum += w[s];
    /* w[s] * 2^12 / sum through one reciprocal (sum >= P(0) >= 2^15, w[s] * 2^12 < 2^37: no overflow) */
    uint64_t rcp = ((uint64_t)1 << 40) / sum;
    for (s = 0; s < n_sym; s++) {
        uint64_t f = ((w[s] << SEGC_SCALE_BITS) * rcp) >> 40;
        freq[s] = (uint32_t)(f ? f : 1);
        total += freq[s];
        if (freq[s] > freq[best])
            best = s;
    }
    while (total > SEGC_TOTFREQ) { /* the floor of 1 overshot: take slots from the largest symbols */
        uint32_t take = total - SEGC_TOTFREQ, room = freq[best] - 1u;
        take = take < room ? take : room;
        freq[best] -= take;
        total -= take;
        for (s = 0; s < n_sym; s++)
            if (freq[s] > freq[best])
                best = s;
    }
    freq[best] += SEGC_TOTFREQ - total;
    return n_sym;
}

#define SEGC2_FOR_ENCODER 1 /* segc2_model: the reciprocals */
#define SEGC2_FOR_DECODER 2 /* segc2_model: the slot table */

/* The coding table of a model, with what the encoder or the decoder (`uses`) needs. */
SEGC_FN void segc2_model(const Segc2Params *p, Segc2Model *t, uint32_t uses)
{
    uint32_t freq[SEGC2_NSYM], n_sym = segc2_freqs(p, freq), s, slot;
    t->k = p->k;
    t->n_sym = n_sym;
    t->esc = p->k == SEGC2_KMAX ? n_sym - 1 : SEGC2_NSYM;
    t->cum[0] = 0;
    for (s = 0; s < n_sym; s++) {
        t->cum[s + 1] = (uint16_t)(t->cum[s] + freq[s]);
        if (uses & SEGC2_FOR_ENCODER)
            t->rcp[s] = freq[s] > 1 ? ~(uint64_t)0 / freq[s] + 1 : 0;
        if (uses & SEGC2_FOR_DECODER)
            for (slot = t->cum[s]; slot < t->cum[s + 1]; slot++)
                t->lut[slot] = (uint8_t)s;
    }
}

/* log2(f) in Q16 for 1 <= f < 2^16, by repeated squaring (integer only) */
SEGC_FN uint32_t segc2_log2_q16(uint32_t f)
{
    uint32_t e = segc_bit_length(f) - 1, out = e << 16;
    uint64_t y = ((uint64_t)f << 31) >> e; /* [2^31, 2^32): f / 2^e in Q31 */
    for (uint32_t bit = 1u << 15; bit; bit >>= 1) {
        y = (y * y) >> 31;
        if (y >= ((uint64_t)1 << 32)) {
            y >>= 1;
            out |= bit;
        }
    }
    return out;
}

/* a build may look the logarithm up in a table of segc2_log2_q16's values (the CPU driver does): same results */
#ifndef SEGC2_LOG2_Q16
#define SEGC2_LOG2_Q16(f) segc2_log2_q16(f)
#endif

SEGC_FN uint32_t segc2_param_bits(const Segc2Params *p)
{
    return 6 + (p->k >= 2 ? 8 : 0) + (p->k >= 3 ? 16 : 0);
}

/* Q16 bits of coding indices with statistics s under model p, its table bits excluded */
SEGC_FN uint64_t segc2_cost_q16(const Segc2Stats *s, const Segc2Params *p)
{
    uint32_t freq[SEGC2_NSYM], n_sym;
    uint64_t bits = 0;
    if (p->k == 1)
        return 0;
    n_sym = segc2_freqs(p, freq);
    for (uint32_t m = 0; m < p->k; m++)
        if (s->hist[m])
            bits += (uint64_t)s->hist[m] * ((SEGC_SCALE_BITS << 16) - SEGC2_LOG2_Q16(freq[m ? 2 * m - 1 : 0]));
    if (p->k == SEGC2_KMAX && s->hist[SEGC2_KMAX])
        bits += (uint64_t)s->hist[SEGC2_KMAX] * ((SEGC_SCALE_BITS << 16) - SEGC2_LOG2_Q16(freq[n_sym - 1])) +
                (s->esc_bits << 16);
    return bits;
}

/* the model of a channel fitted to its statistics (moments of the magnitudes, integer arithmetic) */
SEGC_FN void segc2_fit(const Segc2Stats *s, Segc2Params *p)
{
    uint64_t n = 0, n_tail = 0, tail_sum = 0;
    for (uint32_t m = 0; m < SEGC2_HIST; m++)
        n += s->hist[m];
    p->k = 1; /* past the largest magnitude, at most SEGC2_KMAX */
    for (uint32_t m = SEGC2_HIST; m-- > 0;)
        if (s->hist[m]) {
            p->k = m + 1 < SEGC2_KMAX ? m + 1 : SEGC2_KMAX;
            break;
        }
    p->u[0] = p->u[1] = p->u[2] = 128;
    if (n == 0 || p->k == 1)
        return;
    for (uint32_t m = 2; m < SEGC2_KMAX; m++) {
        n_tail += s->hist[m];
        tail_sum += (uint64_t)s->hist[m] * (m - 2);
    }
    n_tail += s->hist[SEGC2_KMAX];
    tail_sum += (uint64_t)s->hist[SEGC2_KMAX] * (SEGC2_KMAX - 2); /* a floor: escapes are rare */
    /* (count + 1/2) / (total + 1) in Q24 */
    p->u[0] = segc2_code(((2 * (uint64_t)s->hist[0] + 1) << 23) / (n + 1));
    p->u[1] = segc2_code(((2 * (uint64_t)s->hist[1] + 1) << 23) / (n - s->hist[0] + 1));
    /* mean / (1 + mean) of the tail beyond 2, plus 2^-10 */
    p->u[2] = segc2_code((n_tail + tail_sum ? (tail_sum << 24) / (n_tail + tail_sum) : 0) + (1u << 14));
}

/* coordinate search around the moment fit: each code moved while it saves bits */
SEGC_FN void segc2_refine(const Segc2Stats *s, Segc2Params *p)
{
    if (p->k == 1)
        return;
    uint64_t best = segc2_cost_q16(s, p);
    uint32_t n_params = p->k >= 3 ? 3 : 1;
    for (uint32_t i = 0; i < n_params; i++)
        for (int dir = -1; dir <= 1; dir += 2)
            for (;;) {
                int v = (int)p->u[i] + dir;
                if (v < 0 || v > 255)
                    break;
                Segc2Params trial = *p;
                trial.u[i] = (uint32_t)v;
                uint64_t c = segc2_cost_q16(s, &trial);
                if (c >= best)
                    break;
                best = c;
                *p = trial;
            }
}

/* The model the encoder uses for a channel with statistics s over n_cells cells. */
SEGC_FN void segc2_choose(const Segc2Stats *s, uint32_t n_cells, Segc2Params *p)
{
    segc2_fit(s, p);
    if (n_cells >= SEGC2_REFINE_MIN_CELLS)
        segc2_refine(s, p);
}

/* Table section bytes at out (at most (SEGC2_PARAM_BITS_MAX * n_channels + 7) / 8). */
SEGC_FN uint32_t segc2_write_tables(const Segc2Params *params, uint32_t n_channels, uint8_t *out)
{
    SegcBitWriter w = {out, 0, 0};
    for (uint32_t c = 0; c < n_channels; c++) {
        const Segc2Params *p = &params[c];
        segc_put_bits(&w, p->k - 1, 6);
        if (p->k >= 2)
            segc_put_bits(&w, p->u[0], 8);
        if (p->k >= 3) {
            segc_put_bits(&w, p->u[1], 8);
            segc_put_bits(&w, p->u[2], 8);
        }
    }
    if (w.n)
        segc_put_bits(&w, 0, 8 - w.n);
    return (uint32_t)(w.p - out);
}

/* Parses a table section of exactly `size` bytes; SKV_OK or SKV_ERR_CORRUPT. */
SEGC_FN int32_t segc2_read_tables(const uint8_t *in, uint32_t size, uint32_t n_channels, Segc2Params *params)
{
    SegcBitReader r = {in, in + size, 0, 0, 0};
    for (uint32_t c = 0; c < n_channels; c++) {
        Segc2Params *p = &params[c];
        p->k = segc_get_bits(&r, 6) + 1;
        p->u[0] = p->u[1] = p->u[2] = 128;
        if (p->k > SEGC2_KMAX)
            return SKV_ERR_CORRUPT;
        if (p->k >= 2)
            p->u[0] = segc_get_bits(&r, 8);
        if (p->k >= 3) {
            p->u[1] = segc_get_bits(&r, 8);
            p->u[2] = segc_get_bits(&r, 8);
        }
    }
    return r.err || r.p != in + size ? SKV_ERR_CORRUPT : SKV_OK;
}

SEGC_FN void segc2_segment_geometry(uint32_t n_cells, uint32_t n_channels, uint32_t seg, uint32_t *cell0,
                                    uint32_t *ch0, uint32_t *h, uint32_t *w)
{
    uint32_t n_chblocks = (n_channels + SEGC2_CHANNELS - 1) / SEGC2_CHANNELS;
    *cell0 = (seg / n_chblocks) * SEGC2_CELLS;
    *ch0 = (seg % n_chblocks) * SEGC2_CHANNELS;
    *h = n_cells - *cell0 < SEGC2_CELLS ? n_cells - *cell0 : SEGC2_CELLS;
    *w = n_channels - *ch0 < SEGC2_CHANNELS ? n_channels - *ch0 : SEGC2_CHANNELS;
}

SEGC_FN uint64_t segc2_segment_total(uint32_t n_cells, uint32_t n_channels)
{
    return (uint64_t)((n_cells + (uint64_t)SEGC2_CELLS - 1) / SEGC2_CELLS) *
           ((n_channels + (uint64_t)SEGC2_CHANNELS - 1) / SEGC2_CHANNELS);
}

/* floor(v / freq) through the reciprocal rcp = ceil(2^64 / freq) (exact for v < 2^32, freq >= 2) */
SEGC_FN uint32_t segc2_quotient(uint32_t v, uint32_t freq, uint64_t rcp)
{
    if (freq == 1)
        return v;
#if defined(__CUDA_ARCH__)
    return (uint32_t)__umul64hi((uint64_t)v, rcp);
#elif defined(__SIZEOF_INT128__)
    return (uint32_t)(((unsigned __int128)v * rcp) >> 64);
#else
    (void)rcp;
    return v / freq;
#endif
}

/* segc_enc_put with the division through the symbol's reciprocal: the same state */
SEGC_FN void segc2_enc_put(uint32_t *x, uint8_t **pp, uint32_t start, uint32_t freq, uint64_t rcp)
{
    uint32_t v = *x, emit = (v >> (32 - SEGC_SCALE_BITS)) >= freq;
    /* branch-free: the word is always stored below the words so far, and kept only when due (a slot has
     * room below: its lanes' states are written there last) */
    (*pp)[-2] = (uint8_t)v;
    (*pp)[-1] = (uint8_t)(v >> 8);
    *pp -= 2 * emit;
    v = emit ? v >> 16 : v;
    uint32_t q = segc2_quotient(v, freq, rcp);
    *x = (q << SEGC_SCALE_BITS) + (v - q * freq) + start;
}

SEGC_FN uint32_t segc2_symbol(int32_t v, uint32_t k)
{
    uint32_t m = (uint32_t)(v < 0 ? -v : v);
    return m >= k ? 2 * k - 1 : 2 * m - (v > 0);
}

/* the escape of magnitude mag >= SEGC2_KMAX: its raw bits, in the reverse of the decoder's reads */
SEGC_FN void segc2_enc_escape(uint32_t *x, uint8_t **pp, int32_t v)
{
    uint32_t mag = (uint32_t)(v < 0 ? -v : v), len = segc2_escape_length(mag), e = mag - SEGC2_KMAX + 1;
    if (len)
        segc_enc_put_raw(x, pp, e - (1u << len), len);
    segc_enc_put_raw(x, pp, (uint32_t)(v < 0) | (len << 1), 5);
}

/*
 * Codes the h x w block at q (value (r, c) at q[r * stride + c * col_stride]) with the models of its channels (models[0 .. w - 1]) into
 * slot (SEGC2_SEGMENT_BOUND bytes, scratch as in format 1). Returns the body's byte count. The indices must
 * lie in the models' range (they were counted into the statistics the models were fitted to). Format 2 takes
 * a segment's values column by column: value i is row i % h of column i / h, coded by lane i % SEGC2_LANES,
 * so the lanes of a group mostly share one model.
 */
SEGC_FN int32_t segc2_encode_block(const int32_t *q, uint32_t stride, uint32_t col_stride, uint32_t h, uint32_t w,
                                   const Segc2Model *models, uint8_t *slot)
{
    uint32_t x[SEGC2_LANES], r, c, j, s;
    int32_t v[SEGC2_LANES];
    uint32_t col[SEGC2_LANES];
    int any = 0;
    for (c = 0; c < w; c++)
        any |= models[c].k > 1;
    if (!any)
        return 0; /* every channel all zeros */
    for (s = 0; s < SEGC2_LANES; s++)
        x[s] = SEGC_RANS_L;
    uint8_t *end = slot + SEGC2_SEGMENT_BOUND, *p = end;
    uint32_t n = h * w, base = (n - 1) / SEGC2_LANES * SEGC2_LANES;
    for (;; base -= SEGC2_LANES) { /* groups last to first, each in the reverse of the decoder's two passes */
        uint32_t m = n - base < SEGC2_LANES ? n - base : SEGC2_LANES, escaped = 0;
        c = base / h;
        r = base % h;
        if (m == SEGC2_LANES && r + SEGC2_LANES <= h) { /* one column: one model */
            const Segc2Model *t = &models[c];
            const int32_t *in = q + (uint64_t)r * stride + (uint64_t)c * col_stride;
            for (j = 0; j < SEGC2_LANES; j++) {
                v[j] = in[(uint64_t)j * stride];
                escaped |= (uint32_t)(v[j] < 0 ? -v[j] : v[j]) >= t->k;
            }
            for (j = SEGC2_LANES; escaped && j-- > 0;)
                if ((uint32_t)(v[j] < 0 ? -v[j] : v[j]) >= t->k)
                    segc2_enc_escape(&x[j], &p, v[j]);
            for (j = SEGC2_LANES; j-- > 0;) {
                s = segc2_symbol(v[j], t->k);
                segc2_enc_put(&x[j], &p, t->cum[s], (uint32_t)(t->cum[s + 1] - t->cum[s]), t->rcp[s]);
            }
        } else {
            for (j = 0; j < m; j++) {
                v[j] = q[(uint64_t)r * stride + (uint64_t)c * col_stride];
                col[j] = c;
                escaped |= (uint32_t)(v[j] < 0 ? -v[j] : v[j]) >= models[c].k;
                if (++r == h) {
                    r = 0;
                    c++;
                }
            }
            for (j = m; escaped && j-- > 0;)
                if ((uint32_t)(v[j] < 0 ? -v[j] : v[j]) >= models[col[j]].k)
                    segc2_enc_escape(&x[j], &p, v[j]);
            for (j = m; j-- > 0;) {
                const Segc2Model *t = &models[col[j]];
                s = segc2_symbol(v[j], t->k);
                segc2_enc_put(&x[j], &p, t->cum[s], (uint32_t)(t->cum[s + 1] - t->cum[s]), t->rcp[s]);
            }
        }
        if (base == 0)
            break;
    }
    for (s = SEGC2_LANES; s-- > 0;) {
        p -= 4;
        segc_store_le32(p, x[s]);
    }
    uint32_t body = (uint32_t)(end - p);
    for (j = 0; j < body; j++)
        slot[j] = p[j];
    return (int32_t)body;
}

SEGC_FN uint32_t segc2_read_word(const uint8_t **pp)
{
    uint32_t v = (uint32_t)(*pp)[0] | ((uint32_t)(*pp)[1] << 8);
    *pp += 2;
    return v;
}

/* renormalises a decoder state with the next word when due; 0, or 1 when the body has no word left */
SEGC_FN int segc2_dec_renorm(uint32_t *x, const uint8_t **pp, const uint8_t *end)
{
    if (*x >= SEGC_RANS_L)
        return 0;
    if (end - *pp < 2)
        return 1;
    *x = (*x << 16) | segc2_read_word(pp);
    return 0;
}

/* pass 2 of one escaped lane: the value from its raw bits, or 0 with *err set */
SEGC_FN int32_t segc2_dec_escape(uint32_t *x, const uint8_t **pp, const uint8_t *end, int *err)
{
    uint32_t head = *x & 31u, len = head >> 1, e = 1;
    *x >>= 5;
    *err |= segc2_dec_renorm(x, pp, end);
    if (len) {
        if (len > 14) {
            *err = 1;
            return 0;
        }
        e = (1u << len) | (*x & ((1u << len) - 1u));
        *x >>= len;
        *err |= segc2_dec_renorm(x, pp, end);
    }
    if (e + SEGC2_KMAX - 1 > SEGC_MAX_ABS) {
        *err = 1;
        return 0;
    }
    return head & 1u ? -(int32_t)(e + SEGC2_KMAX - 1) : (int32_t)(e + SEGC2_KMAX - 1);
}

/* the value of a direct symbol: 0, +1, -1, +2, -2, ... */
SEGC_FN int32_t segc2_symbol_value(uint32_t s)
{
    int32_t half = (int32_t)((s + 1) >> 1);
    return (s & 1u) ? half : -half;
}

/*
 * Decodes a segment body of `size` bytes into the h x w block at q (value (r, c) at q[r * stride + c *
 * col_stride]) with the models of its channels; reads nothing outside [body, body + size). SKV_OK or SKV_ERR_CORRUPT.
 */
SEGC_FN int32_t segc2_decode_block(const uint8_t *body, uint32_t size, uint32_t h, uint32_t w,
                                   const Segc2Model *models, int32_t *q, uint32_t stride,
                                   uint32_t col_stride)
{
    uint32_t x[SEGC2_LANES], sym[SEGC2_LANES], col[SEGC2_LANES], r, c, s, j;
    int any = 0, err = 0;
    for (c = 0; c < w; c++)
        any |= models[c].k > 1;
    if (!any) {
        if (size)
            return SKV_ERR_CORRUPT;
        for (r = 0; r < h; r++)
            for (c = 0; c < w; c++)
                q[(uint64_t)r * stride + (uint64_t)c * col_stride] = 0;
        return SKV_OK;
    }
    if (size < 4 * SEGC2_LANES)
        return SKV_ERR_CORRUPT;
    const uint8_t *p = body, *end = body + size;
    for (s = 0; s < SEGC2_LANES; s++, p += 4) {
        x[s] = segc_load_le32(p);
        if (x[s] < SEGC_RANS_L)
            return SKV_ERR_CORRUPT;
    }
    uint32_t n = h * w, base;
    r = c = 0;
    for (base = 0; base < n && !err; base += SEGC2_LANES) {
        uint32_t m = n - base < SEGC2_LANES ? n - base : SEGC2_LANES, escaped = 0;
        if (m == SEGC2_LANES && r + SEGC2_LANES <= h && end - p >= 2 * SEGC2_LANES) {
            /* one column, one model, room for every word pass 1 can take: no bounds checks */
            const Segc2Model *t = &models[c];
            int32_t *out = q + (uint64_t)r * stride + (uint64_t)c * col_stride;
            for (j = 0; j < SEGC2_LANES; j++) {
                uint32_t v = x[j], slot = v & (SEGC_TOTFREQ - 1u);
                s = t->lut[slot];
                v = (uint32_t)(t->cum[s + 1] - t->cum[s]) * (v >> SEGC_SCALE_BITS) + slot - t->cum[s];
                uint32_t due = v < SEGC_RANS_L, word = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
                x[j] = due ? (v << 16) | word : v;
                p += 2 * due;
                sym[j] = s;
                escaped |= s == t->esc;
                out[(uint64_t)j * stride] = segc2_symbol_value(s);
            }
            for (j = 0; escaped && j < SEGC2_LANES; j++)
                if (sym[j] == t->esc)
                    out[(uint64_t)j * stride] = segc2_dec_escape(&x[j], &p, end, &err);
            r += SEGC2_LANES;
            if (r == h) {
                r = 0;
                c++;
            }
            continue;
        }
        uint32_t rr = r, cc = c;
        for (j = 0; j < m; j++) { /* pass 1: the group's symbols, lane by lane */
            const Segc2Model *t = &models[cc];
            uint32_t v = x[j], slot = v & (SEGC_TOTFREQ - 1u);
            s = t->lut[slot];
            v = (uint32_t)(t->cum[s + 1] - t->cum[s]) * (v >> SEGC_SCALE_BITS) + slot - t->cum[s];
            x[j] = v;
            err |= segc2_dec_renorm(&x[j], &p, end);
            sym[j] = s;
            col[j] = cc;
            escaped |= s == t->esc;
            if (++rr == h) {
                rr = 0;
                cc++;
            }
        }
        for (j = 0; j < m; j++) { /* pass 2: raw bits of the escaped ones, lane by lane */
            q[(uint64_t)r * stride + (uint64_t)c * col_stride] = escaped && sym[j] == models[col[j]].esc
                                              ? segc2_dec_escape(&x[j], &p, end, &err)
                                              : segc2_symbol_value(sym[j]);
            if (++r == h) {
                r = 0;
                c++;
            }
        }
    }
    if (err || p != end)
        return SKV_ERR_CORRUPT;
    for (s = 0; s < SEGC2_LANES; s++)
        if (x[s] != SEGC_RANS_L)
            return SKV_ERR_CORRUPT;
    return SKV_OK;
}

/* ---- the format-2 stream: header (SEGC_HEADER_SIZE, version 2), u32 table bytes, the table section,
 * u32 size[n_segments], the bodies ---------------------------------------------------------------------- */

SEGC_FN uint64_t segc2_tables_max(uint32_t n_channels)
{
    return ((uint64_t)SEGC2_PARAM_BITS_MAX * n_channels + 7) / 8;
}

/* Where the size table of a stream with a table section of table_bytes starts. */
SEGC_FN uint64_t segc2_sizes_at(uint64_t table_bytes)
{
    return SEGC_HEADER_SIZE + 4 + table_bytes;
}

/* Parses a format-2 stream that must describe an n_cells x n_channels tensor: its models (n_channels) and
 * the byte offset of every segment body (n_segments + 1 entries); returns the stream's size or an error. */
SEGC_FN int64_t segc2_parse(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                            Segc2Params *params, uint64_t *offsets)
{
    uint64_t n_seg = segc2_segment_total(n_cells, n_channels), s, at;
    if (n_seg == 0)
        return SKV_ERR_ARGUMENT;
    if (src_len < SEGC_HEADER_SIZE + 4)
        return SKV_ERR_CORRUPT;
    if (segc_load_le32(src) != SEGC_MAGIC || src[4] != SEGC2_VERSION || src[5] || src[6] || src[7])
        return SKV_ERR_CORRUPT;
    if (segc_load_le32(src + 8) != n_cells || segc_load_le32(src + 12) != n_channels)
        return SKV_ERR_MISMATCH;
    uint64_t table_bytes = segc_load_le32(src + SEGC_HEADER_SIZE);
    if (table_bytes > segc2_tables_max(n_channels) || segc2_sizes_at(table_bytes) + 4 * n_seg > (uint64_t)src_len)
        return SKV_ERR_CORRUPT;
    int32_t rc = segc2_read_tables(src + SEGC_HEADER_SIZE + 4, (uint32_t)table_bytes, n_channels, params);
    if (rc != SKV_OK)
        return rc;
    at = segc2_sizes_at(table_bytes) + 4 * n_seg;
    for (s = 0; s < n_seg; s++) {
        uint32_t size = segc_load_le32(src + segc2_sizes_at(table_bytes) + 4 * s);
        if (size > SEGC2_SEGMENT_BOUND || at + size > (uint64_t)src_len)
            return SKV_ERR_CORRUPT;
        offsets[s] = at;
        at += size;
    }
    offsets[n_seg] = at;
    return (int64_t)at;
}

#endif /* SEQKV_SEGCODE_CORE_H */
