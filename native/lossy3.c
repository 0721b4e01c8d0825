/*
 * lossy3.c -- see lossy3.h: static parametric models per channel, channel-major, four interleaved
 * 32-bit rANS states.
 */
#include "lossy3_model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- bits in and out of the table header ------------------------------------------------------------- */

typedef struct {
    uint8_t *p, *end;
    uint64_t acc;
    uint32_t n;
    int overflow;
} L3BitWriter;

static void l3_put(L3BitWriter *w, uint32_t v, uint32_t n_bits)
{
    w->acc |= (uint64_t)v << w->n;
    w->n += n_bits;
    while (w->n >= 8) {
        if (w->p < w->end)
            *w->p++ = (uint8_t)w->acc;
        else
            w->overflow = 1;
        w->acc >>= 8;
        w->n -= 8;
    }
}

static void l3_put_flush(L3BitWriter *w)
{
    if (w->n)
        l3_put(w, 0, 8 - w->n);
}

typedef struct {
    const uint8_t *p, *end;
    uint64_t acc;
    uint32_t n;
    int err;
} L3BitReader;

static uint32_t l3_get(L3BitReader *r, uint32_t n_bits)
{
    while (r->n < n_bits) {
        if (r->p < r->end)
            r->acc |= (uint64_t)*r->p++ << r->n;
        else
            r->err = 1;
        r->n += 8;
    }
    uint32_t v = (uint32_t)(r->acc & ((1u << n_bits) - 1u));
    r->acc >>= n_bits;
    r->n -= n_bits;
    return v;
}

/* ---- rANS with 32-bit states, 16-bit words written backwards ------------------------------------------- */

static inline void l3_enc_word(uint8_t **pp, uint32_t v)
{
    *pp -= 2;
    (*pp)[0] = (uint8_t)v;
    (*pp)[1] = (uint8_t)(v >> 8);
}

/* one symbol of the encoder: x -> (x / freq) * 2^SCALE + x % freq + start, as x + bias + q * (2^SCALE - freq)
 * with the quotient q through a 64-bit reciprocal (exact: x < 2^32, freq <= 2^SCALE); freq == 1 takes
 * q = x - 1 (reciprocal 2^64 - 1) and bias start + 2^SCALE - 1, so that no symbol needs a branch */
typedef struct {
    uint64_t rcp;
    uint32_t x_max, bias, cmpl, pad; /* x_max: the state from which a word goes out first */
} L3EncSym;

static void l3_enc_symbol(uint32_t start, uint32_t freq, L3EncSym *e)
{
    e->x_max = freq << (32 - LOSSY3_SCALE);
    e->rcp = freq > 1 ? UINT64_MAX / freq + 1 : UINT64_MAX;
    e->bias = freq > 1 ? start : start + L3_M - 1;
    e->cmpl = L3_M - freq;
    e->pad = 0;
}

static inline void l3_enc_sym(uint32_t *x, uint8_t **pp, const L3EncSym *e)
{
    uint32_t v = *x;
    /* branch-free renormalisation: the low word is always stored below the stream and kept only when due
     * (the two bytes below the stream are free: see lossy3_encode) */
    uint32_t emit = v >= e->x_max;
    (*pp)[-2] = (uint8_t)v;
    (*pp)[-1] = (uint8_t)(v >> 8);
    *pp -= 2 * emit;
    v = emit ? v >> 16 : v;
#if defined(__SIZEOF_INT128__)
    uint32_t q = (uint32_t)(((unsigned __int128)v * e->rcp) >> 64);
#else
    uint32_t q = e->cmpl == L3_M - 1 ? v - 1 : v / (L3_M - e->cmpl);
#endif
    *x = v + e->bias + q * e->cmpl;
}

static inline void l3_enc_bits(uint32_t *x, uint8_t **pp, uint32_t bits, uint32_t n_bits)
{
    uint32_t v = *x;
    if (v >= 1u << (32 - n_bits)) {
        l3_enc_word(pp, v);
        v >>= 16;
    }
    *x = (v << n_bits) | bits;
}

static inline void l3_dec_renorm(uint32_t *x, const uint8_t **pp, const uint8_t *end, int *err)
{
    if (*x < L3_LOW) {
        if (end - *pp >= 2) {
            *x = (*x << 16) | (uint32_t)(*pp)[0] | ((uint32_t)(*pp)[1] << 8);
            *pp += 2;
        } else {
            *err = 1;
            *x = L3_LOW;
        }
    }
}

static inline uint32_t l3_dec_bits(uint32_t *x, const uint8_t **pp, const uint8_t *end, uint32_t n_bits, int *err)
{
    uint32_t bits = *x & ((1u << n_bits) - 1u);
    *x >>= n_bits;
    l3_dec_renorm(x, pp, end, err);
    return bits;
}

/* code one index: its symbol (by_value[v], |v| < k), or the escape, sign, length and raw bits (in reverse of
 * the decoder's reads) */
static inline void l3_enc_value(uint32_t *x, uint8_t **pp, int32_t v, uint32_t k, const L3EncSym *by_value,
                                const L3EncSym *esc)
{
    uint32_t m = (uint32_t)(v < 0 ? -v : v);
    if (m < k) {
        l3_enc_sym(x, pp, &by_value[v]);
        return;
    }
    uint32_t e = m - LOSSY3_KMAX + 1, len = l3_floor_log2(e);
    if (len)
        l3_enc_bits(x, pp, e - (1u << len), len);
    l3_enc_bits(x, pp, (v < 0) | (len << 1), 5);
    l3_enc_sym(x, pp, esc);
}

/* the models of shorter streams stay the moment fit: refining one costs up to ~10 us (0.5 us per trial
 * table), more than it saves there (the 128-cell recent window of a 2,000-cell state at 3 bits per value:
 * ~20 ms per state for 0.3% of its size) */
#define L3_REFINE_MIN_ROWS 512

/* where lossy3_encode keeps its indices in the output buffer: past the model header, 16-byte aligned */
#define L3_INDEX_OFFSET(n_channels) ((4 * (size_t)(n_channels) + 31) & ~(size_t)15)

size_t lossy3_encode_bound(uint32_t n_rows, uint32_t n_channels)
{
    size_t n = (size_t)n_rows * n_channels;
    /* per value: one word for the symbol, two more for an escape; the header: 30 bits per channel */
    return 6 * n + L3_INDEX_OFFSET(n_channels) + 4 * LOSSY3_STATES + 16;
}

int64_t lossy3_encode(const float *x, uint32_t n_rows, uint32_t n_channels, const float *inv_step,
                     uint8_t *out, size_t cap, const float *step, float *rec)
{
    size_t n = (size_t)n_rows * n_channels;
    if (n == 0)
        return 0;
    if (cap < lossy3_encode_bound(n_rows, n_channels))
        return SKV_ERR_CAPACITY;
    /* the channel-major indices live in the output buffer, between the model header (< 4 bytes per channel)
     * and the coded words growing down from the end: at most 6 bytes per coded value, so the words never
     * reach an index not yet coded */
    int16_t *q = (int16_t *)(void *)(out + L3_INDEX_OFFSET(n_channels));
    L3Stats *stats = malloc(sizeof(L3Stats) * n_channels);
    L3Params *params = malloc(sizeof(L3Params) * n_channels);
    if (!stats || !params) {
        free(stats);
        free(params);
        return SKV_ERR_MEMORY;
    }
    memset(stats, 0, sizeof(L3Stats) * n_channels);
    for (uint32_t t = 0; t < n_rows; t++) {
        const float *row = x + (size_t)t * n_channels;
        float *dst = rec ? rec + (size_t)t * n_channels : NULL;
        for (uint32_t c = 0; c < n_channels; c++) {
            int32_t v = l3_quantize(row[c], inv_step[c]);
            q[(size_t)c * n_rows + t] = (int16_t)v;
            l3_count(&stats[c], v);
            if (dst) /* what lossy3_decode gives back, as lossy3_reconstruct */
                dst[c] = (float)v * step[c];
        }
    }
    L3BitWriter w = {out, out + cap, 0, 0, 0};
    for (uint32_t c = 0; c < n_channels; c++) {
        l3_fit(&stats[c], &params[c]);
        if (n_rows >= L3_REFINE_MIN_ROWS)
            l3_refine(&stats[c], &params[c]);
        L3Params *p = &params[c];
        l3_put(&w, p->k - 1, 6);
        if (p->k >= 2)
            l3_put(&w, p->u[0], 8);
        if (p->k >= 3) {
            l3_put(&w, p->u[1], 8);
            l3_put(&w, p->u[2], 8);
        }
    }
    l3_put_flush(&w);
    size_t header = (size_t)(w.p - out);
    uint32_t x0 = L3_LOW, x1 = L3_LOW, x2 = L3_LOW, x3 = L3_LOW; /* state t % 4 codes symbol t */
    uint8_t *ptr = out + cap;
    L3Table tab;
    L3EncSym syms[2 * LOSSY3_KMAX], *by_value = syms + LOSSY3_KMAX - 1, *esc = syms + 2 * LOSSY3_KMAX - 1;
    for (uint32_t c = n_channels; c-- > 0;) {
        const L3Params *p = &params[c];
        if (p->k == 1)
            continue; /* all zeros: nothing to code */
        l3_table(p, &tab);
        uint32_t k = p->k;
        for (int32_t v = 1 - (int32_t)k; v < (int32_t)k; v++) {
            uint32_t s = v == 0 ? 0 : v > 0 ? 2 * (uint32_t)v - 1 : 2 * (uint32_t)-v;
            l3_enc_symbol(tab.start[s], tab.freq[s], &by_value[v]);
        }
        if (k == LOSSY3_KMAX)
            l3_enc_symbol(tab.start[tab.n_sym - 1], tab.freq[tab.n_sym - 1], esc);
        const int16_t *qc = q + (size_t)c * n_rows;
        int64_t g = (int64_t)(n_rows - 1) & ~(int64_t)3; /* the last group of four rows, maybe partial */
        switch (n_rows - (uint32_t)g) {
        case 4:
            l3_enc_value(&x3, &ptr, qc[g + 3], k, by_value, esc); /* fall through */
        case 3:
            l3_enc_value(&x2, &ptr, qc[g + 2], k, by_value, esc); /* fall through */
        case 2:
            l3_enc_value(&x1, &ptr, qc[g + 1], k, by_value, esc); /* fall through */
        default:
            l3_enc_value(&x0, &ptr, qc[g], k, by_value, esc);
        }
        for (g -= 4; g >= 0; g -= 4) {
            l3_enc_value(&x3, &ptr, qc[g + 3], k, by_value, esc);
            l3_enc_value(&x2, &ptr, qc[g + 2], k, by_value, esc);
            l3_enc_value(&x1, &ptr, qc[g + 1], k, by_value, esc);
            l3_enc_value(&x0, &ptr, qc[g], k, by_value, esc);
        }
    }
    const uint32_t final[LOSSY3_STATES] = {x0, x1, x2, x3};
    for (int i = LOSSY3_STATES; i-- > 0;) {
        l3_enc_word(&ptr, final[i] >> 16);
        l3_enc_word(&ptr, final[i]);
    }
    size_t body = (size_t)(out + cap - ptr);
    free(stats);
    free(params);
    if (w.overflow || header + body > cap)
        return SKV_ERR_CAPACITY;
    memmove(out + header, ptr, body);
    return (int64_t)(header + body);
}

typedef struct {
    uint16_t start, freq;
    float value;
} L3DecSym;

typedef struct {
    const uint8_t *lut;
    const L3DecSym *syms;
    uint32_t esc;
    float step;
    const uint8_t *end;
} L3DecChannel;

static inline float l3_dec_value(uint32_t *x, const uint8_t **pp, const L3DecChannel *ch, int *err)
{
    uint32_t slot = *x & (L3_M - 1u), s = ch->lut[slot];
    const L3DecSym *sym = &ch->syms[s];
    *x = sym->freq * (*x >> LOSSY3_SCALE) + slot - sym->start;
    l3_dec_renorm(x, pp, ch->end, err);
    if (s != ch->esc)
        return sym->value;
    uint32_t head = l3_dec_bits(x, pp, ch->end, 5, err), len = head >> 1;
    uint32_t e = len ? (1u << len) + l3_dec_bits(x, pp, ch->end, len, err) : 1u;
    int32_t m = (int32_t)(e + LOSSY3_KMAX - 1);
    return (float)(head & 1 ? -m : m) * ch->step;
}

/* Channels decode a block of L3_BLOCK columns at a time into contiguous scratch, then go to x row by row: written
 * straight into x's columns, every value touched its own cache line, which long states (x beyond the cache) paid
 * for with a miss each. */
#define L3_BLOCK 16

static void l3_rows_of_block(const float *block, uint32_t n_rows, uint32_t c0, uint32_t width, float *x,
                             uint32_t n_channels)
{
    for (uint32_t t = 0; t < n_rows; t++) {
        float *row = x + (size_t)t * n_channels + c0;
        for (uint32_t j = 0; j < width; j++)
            row[j] = block[(size_t)j * n_rows + t];
    }
}

int lossy3_decode(const uint8_t *in, size_t n_in, uint32_t n_rows, uint32_t n_channels, const float *step,
                  float *x)
{
    size_t n = (size_t)n_rows * n_channels;
    if (n == 0)
        return n_in == 0 ? SKV_OK : SKV_ERR_CORRUPT;
    L3Params *params = malloc(sizeof(L3Params) * n_channels);
    uint8_t *lut = malloc(L3_M);
    float *block = malloc(sizeof(float) * L3_BLOCK * n_rows);
    if (!params || !lut || !block) {
        free(params);
        free(lut);
        free(block);
        return SKV_ERR_MEMORY;
    }
    L3BitReader br = {in, in + n_in, 0, 0, 0};
    for (uint32_t c = 0; c < n_channels; c++) {
        L3Params *p = &params[c];
        p->k = l3_get(&br, 6) + 1;
        p->u[0] = p->u[1] = p->u[2] = 128;
        if (p->k > LOSSY3_KMAX)
            br.err = 1;
        if (p->k >= 2)
            p->u[0] = (uint8_t)l3_get(&br, 8);
        if (p->k >= 3) {
            p->u[1] = (uint8_t)l3_get(&br, 8);
            p->u[2] = (uint8_t)l3_get(&br, 8);
        }
    }
    const uint8_t *ptr = br.p, *end = in + n_in;
    uint32_t st[LOSSY3_STATES] = {0, 0, 0, 0};
    int err = br.err;
    for (int i = 0; i < LOSSY3_STATES && !err; i++) {
        if (end - ptr < 4) {
            err = 1;
            break;
        }
        st[i] = (uint32_t)ptr[0] | ((uint32_t)ptr[1] << 8) | ((uint32_t)ptr[2] << 16) | ((uint32_t)ptr[3] << 24);
        ptr += 4;
        if (st[i] < L3_LOW)
            err = 1;
    }
    uint32_t x0 = st[0], x1 = st[1], x2 = st[2], x3 = st[3];
    L3Table tab;
    L3DecSym syms[L3_NSYM_MAX];
    for (uint32_t c = 0; c < n_channels && !err; c++) {
        const L3Params *p = &params[c];
        float *col = block + (size_t)(c % L3_BLOCK) * n_rows; /* the stream is channel-major: columns in a block */
        if (p->k == 1) {
            memset(col, 0, sizeof(float) * n_rows);
        } else {
            l3_table(p, &tab);
            for (uint32_t s = 0; s < tab.n_sym; s++) {
                memset(lut + tab.start[s], (int)s, tab.freq[s]);
                int32_t v = s == 0 ? 0 : (s & 1) ? (int32_t)(s + 1) / 2 : -(int32_t)(s / 2);
                syms[s].start = tab.start[s];
                syms[s].freq = tab.freq[s];
                syms[s].value = (float)v * step[c];
            }
            L3DecChannel ch = {lut, syms, p->k == LOSSY3_KMAX ? tab.n_sym - 1 : L3_NSYM_MAX, step[c], end};
            uint32_t t = 0;
            for (; t + 4 <= n_rows; t += 4) {
                col[t] = l3_dec_value(&x0, &ptr, &ch, &err);
                col[t + 1] = l3_dec_value(&x1, &ptr, &ch, &err);
                col[t + 2] = l3_dec_value(&x2, &ptr, &ch, &err);
                col[t + 3] = l3_dec_value(&x3, &ptr, &ch, &err);
            }
            if (t < n_rows)
                col[t] = l3_dec_value(&x0, &ptr, &ch, &err);
            if (t + 1 < n_rows)
                col[t + 1] = l3_dec_value(&x1, &ptr, &ch, &err);
            if (t + 2 < n_rows)
                col[t + 2] = l3_dec_value(&x2, &ptr, &ch, &err);
        }
        if (c % L3_BLOCK == L3_BLOCK - 1 || c + 1 == n_channels) /* the block's rows, a cache line each */
            l3_rows_of_block(block, n_rows, c - c % L3_BLOCK, c % L3_BLOCK + 1, x, n_channels);
    }
    st[0] = x0;
    st[1] = x1;
    st[2] = x2;
    st[3] = x3;
    free(params);
    free(lut);
    free(block);
    if (err || ptr != end)
        return SKV_ERR_CORRUPT;
    for (int i = 0; i < LOSSY3_STATES; i++)
        if (st[i] != L3_LOW)
            return SKV_ERR_CORRUPT;
    return 0;
}


void lossy3_reconstruct(const float *x, uint32_t n_rows, uint32_t n_channels, const float *inv_step,
                        const float *step, float *out)
{
    for (uint32_t t = 0; t < n_rows; t++) {
        const float *row = x + (size_t)t * n_channels;
        float *dst = out + (size_t)t * n_channels;
        for (uint32_t c = 0; c < n_channels; c++)
            dst[c] = (float)l3_quantize(row[c], inv_step[c]) * step[c];
    }
}
