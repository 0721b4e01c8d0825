/*
 * lossy3_model.h -- the per-channel models of lossy format 3 and the statistics they are fitted to
 * (internal to lossy3.c and lossy3_model.c).
 */
#ifndef SEQKV_LOSSY3_MODEL_H
#define SEQKV_LOSSY3_MODEL_H

#include <stdint.h>

#include "lossy.h" /* LOSSY_MAX_ABS */
#include "lossy3.h"

#define L3_M (1u << LOSSY3_SCALE)
#define L3_LOW (1u << 16) /* rANS states live in [2^16, 2^32) and move 16 bits at a time */
#define L3_NSYM_MAX (2 * LOSSY3_KMAX)
#define L3_HIST (LOSSY3_KMAX + 1) /* magnitudes 0 .. KMAX - 1, then the escapes */

typedef struct {
    uint32_t k;       /* direct magnitudes 0 .. k - 1; an escape symbol too when k == LOSSY3_KMAX */
    uint8_t u[3];     /* P(0), P(1 | > 0), tail ratio: logistic codes (l3_logistic) */
} L3Params;

typedef struct {
    uint32_t n_sym;
    uint16_t start[L3_NSYM_MAX], freq[L3_NSYM_MAX];
} L3Table;

/* ---- statistics of a block: per-channel magnitude histograms ------------------------------------------- */

typedef struct {
    uint32_t hist[L3_HIST];
    uint32_t max_mag;
    uint64_t esc_bits; /* raw bits of the escapes */
} L3Stats;

/* round to nearest, ties to even (|y| <= LOSSY_MAX_ABS < 2^22: adding 1.5 * 2^23 rounds at the unit) */
static inline int32_t l3_quantize(float v, float inv)
{
    float y = v * inv;
    y = y > LOSSY_MAX_ABS ? LOSSY_MAX_ABS : y < -LOSSY_MAX_ABS ? -LOSSY_MAX_ABS : y == y ? y : 0.0f;
    return (int32_t)((y + 12582912.0f) - 12582912.0f);
}

static inline uint32_t l3_floor_log2(uint32_t v)
{
    uint32_t l = 0;
    while (v >>= 1)
        l++;
    return l;
}

static inline void l3_count(L3Stats *s, int32_t q)
{
    uint32_t m = (uint32_t)(q < 0 ? -q : q);
    if (m > s->max_mag)
        s->max_mag = m;
    if (m < LOSSY3_KMAX) {
        s->hist[m]++;
    } else {
        s->hist[LOSSY3_KMAX]++;
        s->esc_bits += 5 + l3_floor_log2(m - LOSSY3_KMAX + 1);
    }
}

/* the rANS table of a model */
void l3_table(const L3Params *p, L3Table *t);
/* the model of a channel fitted to its statistics, then refined on the exact cost */
void l3_fit(const L3Stats *s, L3Params *p);
void l3_refine(const L3Stats *s, L3Params *p);

#endif /* SEQKV_LOSSY3_MODEL_H */
