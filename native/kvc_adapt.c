/*
 * kvc_adapt.c -- adaptive per-channel tables of the kv_lossless codec (INT sections).
 *
 * The values of q8_0 / q4_0 blocks are far from Gaussian (clipped, with the block maximum at
 * an end of the range), so each of their channels counts its own symbols (the distance of the
 * value from the prediction). The counts start from the channel's Gaussian context table
 * (worth KVC_ADAPT_PRIOR / KVC_ADAPT_INC = 512 symbols) and become a rANS table after 16, 32, ...,
 * 512 symbols, then every 512. Encoder and decoder follow the same schedule.
 */
#include <stdlib.h>
#include <string.h>

#include "kvc_internal.h"


int kvc_adapt_init(KvcAdapt *a, int A, const KvcCtx *prior)
{
    size_t bytes = (size_t)A * 4 + (size_t)A * 8 + ((size_t)A + 1) * 4 + ((size_t)1 << KVC_ADAPT_BUCKET_BITS) * 2;
    uint8_t *mem = malloc(bytes);
    if (!mem)
        return -1;
    a->count = (uint32_t *)mem;
    a->tab.enc = mem + (size_t)A * 4;
    a->tab.dec = (uint32_t *)(mem + (size_t)A * 12);
    a->tab.bucket = (uint16_t *)(mem + (size_t)A * 16 + 4);
    a->total = 0;
    for (int s = 0; s < A; s++) {
        uint32_t freq = (uint32_t)(kvc_enc_get(prior->enc, s) >> 32);
        a->count[s] = 1 + (uint32_t)(((uint64_t)freq * KVC_ADAPT_PRIOR) >> KVC_PROB_BITS);
        a->total += a->count[s];
    }
    a->seen = 0;
    a->period = 0;
    kvc_adapt_rebuild(a, A);
    return 0;
}

void kvc_adapt_free(KvcAdapt *a)
{
    free(a->count);
    a->count = NULL;
}

/* Counts -> frequencies 1 + count * (2^PROB_BITS - A) / total (floored), remainder to symbol 0
 * (the value equal to the prediction's floor). */
void kvc_adapt_rebuild(KvcAdapt *a, int A)
{
    a->seen += a->period;
    a->total += KVC_ADAPT_INC * a->period;
    if (a->total > KVC_ADAPT_LIMIT) {
        a->total = 0;
        for (int s = 0; s < A; s++) {
            a->count[s] = (a->count[s] + 1) >> 1;
            a->total += a->count[s];
        }
    }
    uint64_t mul = ((uint64_t)(KVC_PROB_ONE - (uint32_t)A) << 32) / a->total;
    uint32_t freq[KVC_MAX_A], sum = 0;
    for (int s = 0; s < A; s++) {
        freq[s] = 1 + (uint32_t)((a->count[s] * mul) >> 32);
        sum += freq[s];
    }
    freq[0] += KVC_PROB_ONE - sum;
    uint32_t run = 0;
    for (int s = 0; s < A; s++) { /* rank == symbol */
        a->tab.dec[s] = run | (uint32_t)s << KVC_DEC_SYM_SHIFT;
        kvc_enc_set(a->tab.enc, s, run | (uint64_t)freq[s] << 32);
        run += freq[s];
    }
    a->tab.dec[A] = run;
    kvc_fill_buckets(&a->tab, KVC_ADAPT_BUCKET_BITS);
    a->period = a->seen < KVC_ADAPT_FIRST ? KVC_ADAPT_FIRST : (a->seen < KVC_ADAPT_MAX ? a->seen : KVC_ADAPT_MAX);
    a->countdown = a->period;
}
