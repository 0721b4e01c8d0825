/*
 * kvc_internal.h -- shared internals of the kv_lossless codec (not called from Python).
 *
 * The model, in one paragraph: every channel (one coordinate of a K or V vector, or one int8 /
 * nibble column of a q8_0 / q4_0 row) is coded token after token. A predictor (an exponential
 * moving average, rotated for RoPE channel pairs) gives the expected value c of the next
 * element; a per-channel residual scale sigma is sent as side information. For FLOAT elements
 * (f16, bf16, the top half of f32), (c, sigma) select one of a few hundred contexts and map the
 * element's top bits (sign, exponent, 2-3 mantissa bits) to a symbol whose distribution is
 * (nearly) the same for every channel that reaches that context:
 *   - "near" contexts (|c| < ~3 sigma): the symbol is the bin with its exponent rotated
 *     relative to sigma's exponent; the context is round(4 c / sigma) and sigma's mantissa;
 *   - "far" contexts: the symbol is the distance, in value-ordered bins, from the bin holding
 *     c; the context is sigma / (bin width), c's position in its bin and the bin's mantissa.
 * A context's table is static: the Gaussian of a canonical element of the context, built once
 * with integer arithmetic (kvc_model.c). INT elements (q8_0 / q4_0 values, times the sign of
 * their block's scale) count their own distances from floor(c) per channel (kvc_adapt.c).
 * One rANS step codes the symbol and the raw low bits of the word at once.
 */
#ifndef SEQKV_KVC_INTERNAL_H
#define SEQKV_KVC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rans.h"

/* ---- fixed parameters of format version 1 ---- */
#define KVC_PROB_BITS 20                 /* symbol probability precision */
#define KVC_PROB_ONE (1u << KVC_PROB_BITS)
#define KVC_BUCKET_BITS 10               /* decoder lookup (not part of the format) */
#define KVC_BUCKET_SHIFT (KVC_PROB_BITS - KVC_BUCKET_BITS)
#define KVC_LIKELY_Q30 (1u << 16)        /* prior probability (Q30) of a "likely" symbol */
#define KVC_N_STATES 4                   /* interleaved rANS states */
#define KVC_GROUP 4                      /* channels coded in lockstep (one per state) */
#define KVC_F16_NB 9                     /* symbol bits of f16: sign, exponent, 3 mantissa bits */
#define KVC_BF16_NB 10                   /* symbol bits of bf16 (and f32's top half): + 2 mantissa bits */
#define KVC_NEAR_RES 4                   /* near contexts per sigma of c */
#define KVC_NEAR_Z 12                     /* near contexts: round(RES c/sigma) in [-Z, Z] */
#define KVC_FAR_MANT 1                   /* far contexts also keyed by the mantissa bits of c's bin */
#define KVC_N_NEAR ((2 * KVC_NEAR_Z + 1) * 4)
#define KVC_N_FAR (64 << (KVC_FAR_MANT ? 3 : 0)) /* 16 scale buckets x 4 phases (x 8 mantissas) */
#define KVC_N_CTX_FLOAT (KVC_N_NEAR + KVC_N_FAR)
#define KVC_N_CTX_INT 96                 /* 24 scale buckets x 4 phases */
#define KVC_INT_BUCKET_OFFSET 4          /* INT scale bucket = 2 log2(sigma) + 4, sigma in units */
#define KVC_INT_FLOOR_Q30 (1u << 23)     /* INT priors: probability spread uniformly (1/128) */
#define KVC_ADAPT_INC 32u               /* INT adaptive tables: weight of one coded symbol */
#define KVC_ADAPT_PRIOR 16384u           /* weight of the Gaussian prior (512 symbols) */
#define KVC_ADAPT_LIMIT (1u << 24)       /* halve the counts above this total */
#define KVC_ADAPT_FIRST 16u              /* rebuild after 16, 32, ... symbols */
#define KVC_ADAPT_MAX 512u               /* ... then every 512 */
#define KVC_ADAPT_BUCKET_BITS 8
#define KVC_PRED_LIMIT (1ll << 46)       /* predictions are clamped to +-this */
#define KVC_CDF_SIZE 513

extern const uint32_t kvc_normal_cdf_q30[KVC_CDF_SIZE];

enum { KVC_KIND_FLOAT = 0, KVC_KIND_INT = 1 };
enum { KVC_ELEM_W16 = 0, KVC_ELEM_W32 = 1, KVC_ELEM_I8 = 2, KVC_ELEM_NIB = 3 };

/* How the elements of one channel set are stored and modelled. */
typedef struct {
    int kind;       /* KVC_KIND_FLOAT or KVC_KIND_INT */
    int elem;       /* KVC_ELEM_*: how an element is read and written */
    int nb;         /* symbol bits; the alphabet has A = 2^nb symbols */
    int raw_bits;   /* low bits of the 16-bit word coded raw in the same step */
    int extra_bits; /* a second raw step per element (the low half of an f32) */
    int mant_bits;  /* FLOAT: mantissa bits of the 16-bit word (10 f16, 7 bf16) */
    int exp_bits;   /* FLOAT: exponent bits (5 f16, 8 bf16) */
    int e0;         /* FLOAT: fixed point unit = 2^(e0 + 1 - bias - mant_bits) */
} KvcFormat;

/* One channel: where its elements are and its side information. */
typedef struct {
    uint8_t *base;        /* first element (for nibbles: the byte holding it) */
    ptrdiff_t stride;     /* bytes between consecutive tokens */
    int nib_shift;        /* nibbles: 0 (low) or 4 (high) */
    int64_t scale_off;    /* INT: offset of the high byte of the block's f16 scale from base;
                             values are coded times the sign of that scale */
    uint32_t mu_word;     /* stored mu: FLOAT word, or INT mu in 1/256 (as u16) */
    int64_t mu;           /* predictor start value, fixed point (from mu_word) */
    int sigma_k;          /* sigma = (4 + sigma_p) << (sigma_k - 2), fixed point */
    int sigma_p;
    /* derived from sigma by kvc_channel_derive() */
    int k5;               /* sigma_k - 5 */
    int64_t near_mul;     /* round(2^19 / (4 + sigma_p)): 2c/sigma in Q21 is (c >> k5) * near_mul */
    int near_base;        /* FLOAT near context = round(2c/sigma) * 4 + near_base */
    int far_base;         /* FLOAT far scale bucket = far_base - 2 * msb(|c|), clamped to 0..15 */
    int int_ctx;          /* INT: 4 * scale bucket */
    int exp_rot;          /* FLOAT near symbols: exponent rotation */
} KvcChannel;

/* One lane: a channel or a rotated pair, sharing a predictor. */
typedef struct {
    int ch[2];            /* channel indices; ch[1] < 0 for a single channel */
    int alpha_q8;         /* EMA weight in 1/256: 0, 16, 32, 64 or 128 */
    int32_t cos_q14, sin_q14;
} KvcLane;

/* One context: a static rANS table, built on first use. The symbols are laid out in "rank"
 * order -- the likely ones first, then the rest, each part in symbol order -- so that the rare
 * symbols, whose tiny frequencies crowd the decoder's buckets, all sit at the end. Each side
 * finds everything about a symbol in one load: the encoder by symbol, the decoder by rank. */
typedef struct {
    uint8_t *enc;         /* encoder: start | freq << 32 of each symbol [A], 8 bytes each at a 4-byte
                             aligned offset: read and written through kvc_enc_get / kvc_enc_set */
    uint32_t *dec;        /* decoder: start | symbol << KVC_DEC_SYM_SHIFT by rank [A + 1];
                             dec[A] = KVC_PROB_ONE (the end of the last symbol) */
    uint16_t *bucket;     /* decoder: rank holding slot b << KVC_BUCKET_SHIFT [2^BUCKET_BITS] */
} KvcCtx;                 /* enc == NULL until built */

static inline uint64_t kvc_enc_get(const uint8_t *enc, int sym)
{
    uint64_t v;
    memcpy(&v, enc + (size_t)sym * 8, 8);
    return v;
}

static inline void kvc_enc_set(uint8_t *enc, int sym, uint64_t v)
{
    memcpy(enc + (size_t)sym * 8, &v, 8);
}

#define KVC_DEC_SYM_SHIFT (KVC_PROB_BITS + 1) /* start may be KVC_PROB_ONE (the end marker) */
#define KVC_DEC_START(e) ((e) & ((1u << KVC_DEC_SYM_SHIFT) - 1))
#define KVC_DEC_SYM(e) ((e) >> KVC_DEC_SYM_SHIFT)

#define KVC_MAX_A 2048
#define KVC_EDGE_INF INT64_MAX

/* The contexts of one format: tables depend only on the format and the context id. */
typedef struct {
    KvcFormat fmt;        /* the format the tables were built for (elem is irrelevant) */
    int A;
    int n_ctx;
    KvcCtx *ctx;
    uint8_t *mem;         /* n_ctx tables of per_ctx bytes */
    size_t per_ctx;
    int64_t edge[KVC_MAX_A / 2 + 1]; /* FLOAT: fixed-point lower edge of the positive bins */
} KvcCtxSet;

/* How the symbol of an element is derived, once the context is known. */
typedef struct {
    int ctx;
    int near;             /* FLOAT near: exponent rotation; else distance from ref_ord */
    int ref_ord;          /* value-ordered index of the bin of c (or floor(c) for INT) */
    int mirror;           /* count distance downwards (c < 0) */
} KvcMap;

/* An adaptive table of one channel (INT sections): symbol counts, rebuilt on a schedule. */
typedef struct {
    KvcCtx tab;           /* rank == symbol */
    uint32_t *count;
    uint32_t total;       /* sum of count at the last rebuild */
    uint32_t seen;        /* symbols coded up to the last rebuild */
    uint32_t period;      /* symbols from the last rebuild to the next */
    uint32_t countdown;
} KvcAdapt;

/* ---- integer helpers ---- */
/* Arithmetic shift right (floor division by 2^s). C leaves >> of negative values to the
 * implementation; every compiler we build with (GCC, Clang, MSVC) shifts arithmetically. */
static inline int64_t kvc_asr(int64_t x, int s)
{
    return x >> s;
}

static inline int kvc_msb64(uint64_t x)
{
    return 63 - __builtin_clzll(x | 1);
}

static inline int kvc_clamp_int(int x, int lo, int hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

static inline int64_t kvc_clamp_pred(int64_t x)
{
    return x > KVC_PRED_LIMIT ? KVC_PRED_LIMIT : (x < -KVC_PRED_LIMIT ? -KVC_PRED_LIMIT : x);
}

/* value-ordered index of a FLOAT bin h (sign | exponent | mantissa prefix) and its inverse */
static inline int kvc_ord(int h, int A)
{
    return h ^ ((h & (A >> 1)) ? A - 1 : A >> 1);
}

/* FLOAT word (16 bits) to a signed fixed-point value. */
static inline int64_t kvc_float_to_fix(const KvcFormat *f, uint32_t word)
{
    uint32_t e = (word >> f->mant_bits) & ((1u << f->exp_bits) - 1);
    uint64_t m = word & ((1u << f->mant_bits) - 1);
    int sh = -f->e0;
    int max_sh = 43 - f->mant_bits;
    uint64_t mag;
    if (e) {
        m |= 1ull << f->mant_bits;
        sh += (int)e - 1;
    }
    if (sh >= 0)
        mag = m << (sh > max_sh ? max_sh : sh);
    else
        mag = sh <= -32 ? 0 : m >> -sh;
    return ((word >> (f->mant_bits + f->exp_bits)) & 1) ? -(int64_t)mag : (int64_t)mag;
}

/* model */
int kvc_ctxset_init(KvcCtxSet *set, const KvcFormat *f, int n_ctx);
void kvc_ctxset_free(KvcCtxSet *set);
void kvc_ctx_build(KvcCtxSet *set, int ctx, const KvcFormat *f);

/* The decoder's bucket table of a context: the rank holding slot b << (KVC_PROB_BITS - bucket_bits). */
void kvc_fill_buckets(KvcCtx *t, int bucket_bits);

int kvc_adapt_init(KvcAdapt *a, int A, const KvcCtx *prior);
void kvc_adapt_rebuild(KvcAdapt *a, int A);
void kvc_adapt_free(KvcAdapt *a);

static inline void kvc_adapt_update(KvcAdapt *a, int sym, int A)
{
    a->count[sym] += KVC_ADAPT_INC;
    if (--a->countdown == 0)
        kvc_adapt_rebuild(a, A);
}

/* side information -> derived per-channel constants (near_mul, exp_rot) */
void kvc_channel_derive(KvcChannel *ch, const KvcFormat *f);

#endif /* SEQKV_KVC_INTERNAL_H */
