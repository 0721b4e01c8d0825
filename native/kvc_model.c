/*
 * kvc_model.c -- context tables of the kv_lossless codec.
 *
 * A context's table is built once, on its first use, from a Gaussian prior: N(c, sigma) of the
 * element that first used it, integrated over each bin (the integer CDF table of kvc_cdf.c and
 * one IEEE double multiply per bin edge, exact and identical everywhere), mapped to the
 * context's symbols and quantized to a rANS table (every symbol >= 1, total 2^KVC_PROB_BITS).
 * (Adapting the tables to the coded symbols was measured to gain < 0.05%: the (c, sigma)
 * contexts already fit the data, so the tables stay static.)
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* GCC: off already under -std=c11 */
#endif

#include <stdlib.h>
#include <string.h>

#include "kvc_internal.h"
#include "kvc_map.h"

#define Q30_ONE (1u << 30)


static void float_edges(KvcCtxSet *set, const KvcFormat *f)
{
    int half = 1 << (f->nb - 1), mb = f->nb - 1 - f->exp_bits, e_max = (1 << f->exp_bits) - 1;
    for (int j = 0; j <= half; j++)
        set->edge[j] = j < half && (j >> mb) < e_max ? kvc_float_to_fix(f, (uint32_t)j << f->raw_bits)
                                                      : KVC_EDGE_INF;
}

int kvc_ctxset_init(KvcCtxSet *set, const KvcFormat *f, int n_ctx)
{
    int A = 1 << f->nb;
    size_t per_ctx = (size_t)A * 8 + ((size_t)A + 1) * 4 + (1u << KVC_BUCKET_BITS) * 2;
    uint8_t *mem = calloc((size_t)n_ctx, per_ctx);
    KvcCtx *ctx = calloc((size_t)n_ctx, sizeof(KvcCtx));
    if (!mem || !ctx) {
        free(mem);
        free(ctx);
        return -1;
    }
    set->per_ctx = per_ctx;
    set->fmt = *f;
    set->A = A;
    set->n_ctx = n_ctx;
    set->ctx = ctx;
    set->mem = mem;
    if (f->kind == KVC_KIND_FLOAT)
        float_edges(set, f);
    return 0;
}

void kvc_ctxset_free(KvcCtxSet *set)
{
    free(set->mem);
    free(set->ctx);
    set->mem = NULL;
    set->ctx = NULL;
}

/* Phi(diff * inv / 32768) in Q30; inv = 32768 / sigma. One multiply, then integers only. */
static uint32_t phi_q30(int64_t diff, double inv)
{
    double zf = (double)diff * inv; /* z * 2^15 */
    if (zf <= -262144.0)
        return 0;
    if (zf >= 262144.0)
        return Q30_ONE;
    int64_t u = (int64_t)zf + 262144; /* (z + 8) * 2^15, in [0, 2^19] */
    int i = (int)(u >> 10);
    uint32_t frac = (uint32_t)(u & 1023);
    if (i >= KVC_CDF_SIZE - 1)
        return Q30_ONE;
    uint32_t lo = kvc_normal_cdf_q30[i], hi = kvc_normal_cdf_q30[i + 1];
    return lo + (uint32_t)(((uint64_t)(hi - lo) * frac) >> 10);
}

/* The prior probability (Q30) of bin h goes to its symbol in prob[]. */
static void put_prior(uint32_t *prob, const KvcFormat *f, const KvcChannel *ch, const KvcMap *map, int h,
                      uint32_t p_q30)
{
    prob[kvc_sym_any(f, ch, map, h)] = p_q30;
}

/* Prior of a FLOAT context: Gaussian(c, sigma) integrated over each bin of the word's top bits. */
static void float_prior(const KvcCtxSet *set, uint32_t *prob, const KvcFormat *f, const KvcChannel *ch,
                        const KvcMap *map, int64_t c, double inv)
{
    int half = 1 << (f->nb - 1);
    uint32_t f_pos_prev = 0, f_neg_prev = 0;
    for (int j = 0; j <= half; j++) {
        int64_t edge = set->edge[j];
        uint32_t f_pos = edge == KVC_EDGE_INF ? Q30_ONE : phi_q30(edge - c, inv);
        uint32_t f_neg = edge == KVC_EDGE_INF ? 0 : phi_q30(-edge - c, inv);
        if (j > 0) {
            put_prior(prob, f, ch, map, j - 1, f_pos - f_pos_prev);
            put_prior(prob, f, ch, map, half | (j - 1), f_neg_prev - f_neg);
        }
        f_pos_prev = f_pos;
        f_neg_prev = f_neg;
    }
}

/* Prior of an INT context: Gaussian(c, sigma) over [q - 1/2, q + 1/2) in Q16 units. */
static void int_prior(uint32_t *prob, const KvcFormat *f, const KvcChannel *ch, const KvcMap *map,
                      int64_t c, double inv)
{
    int A = 1 << f->nb;
    uint32_t prev = 0, floor = KVC_INT_FLOOR_Q30 / (uint32_t)A;
    for (int q = -A / 2; q < A / 2; q++) {
        uint32_t upper = q == A / 2 - 1 ? Q30_ONE : phi_q30((int64_t)q * 65536 + 32768 - c, inv);
        uint32_t p = upper - prev;
        put_prior(prob, f, ch, map, q & (A - 1), p - (uint32_t)(((uint64_t)p * KVC_INT_FLOOR_Q30) >> 30) + floor);
        prev = upper;
    }
}

/* Symbols by rank: the likely ones (prior >= KVC_LIKELY_Q30) first, then the others. */
static void rank_symbols(const uint32_t *prob, int A, uint16_t *order)
{
    int r = 0;
    for (int s = 0; s < A; s++)
        if (prob[s] >= KVC_LIKELY_Q30)
            order[r++] = (uint16_t)s;
    for (int s = 0; s < A; s++)
        if (prob[s] < KVC_LIKELY_Q30)
            order[r++] = (uint16_t)s;
}

/* Probabilities (Q30, summing to 2^30) to a cumulative table by rank: each frequency is
 * 1 + p * (2^PROB_BITS - A) / 2^30, floored; the remainder goes to the most likely symbol. */
static void quantize(uint32_t *cum, const uint32_t *prob, const uint16_t *order, int A)
{
    uint32_t sum = 0, best_p = 0;
    int best = 0;
    for (int r = 0; r < A; r++) {
        uint32_t p = prob[order[r]];
        uint32_t freq = 1 + (uint32_t)(((uint64_t)p * (KVC_PROB_ONE - (uint32_t)A)) >> 30);
        cum[r] = freq;
        sum += freq;
        if (p > best_p) {
            best_p = p;
            best = r;
        }
    }
    cum[best] += KVC_PROB_ONE - sum;
    uint32_t run = 0;
    for (int r = 0; r < A; r++) {
        uint32_t freq = cum[r];
        cum[r] = run;
        run += freq;
    }
    cum[A] = run;
}

void kvc_fill_buckets(KvcCtx *t, int bucket_bits)
{
    int r = 0;
    for (uint32_t b = 0; b < (1u << bucket_bits); b++) {
        uint32_t slot = b << (KVC_PROB_BITS - bucket_bits);
        while (KVC_DEC_START(t->dec[r + 1]) <= slot)
            r++;
        t->bucket[b] = (uint16_t)r;
    }
}

static void prepare(KvcCtxSet *set, KvcCtx *t, const KvcFormat *f, const KvcChannel *ch,
                    const KvcMap *map, int64_t c)
{
    double sigma = (double)((int64_t)(4 + ch->sigma_p) << (ch->sigma_k - 2));
    double inv = 32768.0 / sigma;
    uint32_t prob[KVC_MAX_A], cum[KVC_MAX_A + 1];
    int A = set->A;
    uint8_t *p = set->mem + (size_t)(t - set->ctx) * set->per_ctx;
    t->enc = p;
    t->dec = (uint32_t *)(p + (size_t)A * 8);
    t->bucket = (uint16_t *)(p + (size_t)A * 8 + ((size_t)A + 1) * 4);
    if (f->kind == KVC_KIND_FLOAT)
        float_prior(set, prob, f, ch, map, c, inv);
    else
        int_prior(prob, f, ch, map, c, inv);
    uint16_t order[KVC_MAX_A];
    rank_symbols(prob, A, order);
    quantize(cum, prob, order, A);
    for (int r = 0; r < A; r++) {
        t->dec[r] = cum[r] | (uint32_t)order[r] << KVC_DEC_SYM_SHIFT;
        kvc_enc_set(t->enc, order[r], cum[r] | (uint64_t)(cum[r + 1] - cum[r]) << 32);
    }
    t->dec[A] = KVC_PROB_ONE;
    kvc_fill_buckets(t, KVC_BUCKET_BITS);
}

/* sigma_k, sigma_p for a far / INT scale bucket b (2 log2(sigma / bin width) + 6, rounded) */
static void sigma_of_bucket(KvcChannel *ch, int b, int width_msb, int offset)
{
    int d = b - offset;
    int half = d >= 0 ? d / 2 : -((1 - d) / 2);
    ch->sigma_p = (d - 2 * half) ? 3 : 1;
    ch->sigma_k = width_msb + half;
}

/* Build context ctx from its canonical element: the table depends on the context id and the
 * format only, never on the data that reaches it first. */
void kvc_ctx_build(KvcCtxSet *set, int ctx, const KvcFormat *f)
{
    KvcChannel ch;
    KvcMap map = {ctx, 0, 0, 0};
    int64_t c;
    memset(&ch, 0, sizeof(ch));
    if (f->kind == KVC_KIND_INT) {
        sigma_of_bucket(&ch, ctx / 4, 16, KVC_INT_BUCKET_OFFSET);
        c = (int64_t)(2 * (ctx % 4) + 1) << 13;
    } else if (ctx < KVC_N_NEAR) {
        ch.sigma_k = 24;
        ch.sigma_p = ctx % 4;
        c = (int64_t)(ctx / 4 - KVC_NEAR_Z) * ((int64_t)(4 + ch.sigma_p) << 22) / KVC_NEAR_RES;
        map.near = 1;
    } else {
        int mb = f->nb - 1 - f->exp_bits, msb = 32, far = ctx - KVC_N_NEAR;
        int mant = KVC_FAR_MANT ? far & ((1 << mb) - 1) : 0;
        far >>= KVC_FAR_MANT ? mb : 0;
        sigma_of_bucket(&ch, far / 4, msb - mb, 6);
        c = ((int64_t)((1 << mb) + mant) << (msb - mb)) + ((int64_t)(2 * (far % 4) + 1) << (msb - mb - 3));
        map.ref_ord = kvc_ord(kvc_float_bin((uint64_t)c, msb, f->nb, f->exp_bits, f->mant_bits, f->e0), 1 << f->nb);
    }
    kvc_channel_derive(&ch, f);
    prepare(set, &set->ctx[ctx], f, &ch, &map, c);
}

void kvc_channel_derive(KvcChannel *ch, const KvcFormat *f)
{
    int mb = f->nb - 1 - f->exp_bits;
    ch->k5 = ch->sigma_k - 5;
    ch->near_mul = ((1 << 18) * KVC_NEAR_RES + (4 + ch->sigma_p) / 2) / (4 + ch->sigma_p);
    ch->near_base = KVC_NEAR_Z * 4 + ch->sigma_p;
    ch->far_base = 2 * (ch->sigma_k + mb) + (ch->sigma_p >= 2) + 6;
    ch->int_ctx = 4 * kvc_clamp_int(2 * (ch->sigma_k - 16) + (ch->sigma_p >= 2) + KVC_INT_BUCKET_OFFSET, 0,
                                    KVC_N_CTX_INT / 4 - 1);
    ch->exp_rot = 0;
    if (f->kind == KVC_KIND_FLOAT)
        ch->exp_rot = ((1 << f->exp_bits) - 8) - (ch->sigma_k - f->mant_bits + 1 + f->e0);
}
