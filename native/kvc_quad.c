/*
 * kvc_quad.c -- the fast decoding loop of a full group of four f16 channels.
 *
 * The same model and stream as code_elem() in kvc_lanes.c, written for the common case only:
 * f16 words, four channels (one per rANS state) with one stride, and at least 16 stream bytes
 * left, so that the four renormalisations of a token read their words without a bounds check
 * (and without a branch). Predictions stay in locals, the elements of a token are found from
 * one row pointer, and a context's tables from its id. kvc_lanes.c decodes what is left (the
 * last tokens of the stream, every other group and format).
 */
#include <string.h>

#include "kvc_internal.h"
#include "kvc_lanes.h"
#include "kvc_map.h"

#define INLINE static inline __attribute__((always_inline))

#define NB KVC_F16_NB
#define EXP_BITS 5
#define MANT_BITS 10
#define RAW_BITS (16 - NB)
#define SCALE (KVC_PROB_BITS + RAW_BITS)
#define A (1 << NB)
/* the layout of one context's tables in KvcCtxSet.mem (kvc_ctxset_init, prepare) */
#define PER_CTX ((size_t)A * 8 + ((size_t)A + 1) * 4 + (1u << KVC_BUCKET_BITS) * 2)
#define DEC_AT ((size_t)A * 8)
#define BUCKET_AT (DEC_AT + ((size_t)A + 1) * 4)

typedef struct {
    ptrdiff_t off;          /* the element's offset in the token's row */
    KvcChannel ch;          /* a copy: one load per constant */
    KvcMap map;             /* static groups: the fixed map and tables */
    const uint8_t *tab;
    uint32_t near_add;      /* near symbols: h = (sym & ~E) | ((sym + near_add) & E), E the exponent */
} Chan;

#define E_FIELD (((1u << EXP_BITS) - 1) << (NB - 1 - EXP_BITS))

static inline void store_le16(uint8_t *p, uint32_t v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint16_t w = (uint16_t)v;
    memcpy(p, &w, 2);
#else
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
#endif
}

/* What the loop reads, in locals: with -fno-strict-aliasing, every element stored could alias
 * a structure field, which would otherwise be loaded again for each element. */
typedef struct {
    KvcCtxSet *set;
    const KvcCtx *ctx;
    const uint8_t *mem;
    const KvcFormat *fmt;
    const ValueOfBin *vt;
    int e0;
} Env;

/* The tables of context ctx (built on first use). */
INLINE const uint8_t *tables(const Env *env, int ctx)
{
    if (__builtin_expect(!env->ctx[ctx].enc, 0))
        kvc_ctx_build(env->set, ctx, env->fmt);
    return env->mem + (size_t)ctx * PER_CTX;
}

/* kvc_h_float(), with the near maps' exponent rotation precomputed. */
INLINE int h_of(const Chan *c, const KvcMap *map, uint32_t sym)
{
    if (map->near)
        return (int)((sym & ~E_FIELD) | ((sym + c->near_add) & E_FIELD));
    return kvc_h_float(&c->ch, map, (int)sym, NB, EXP_BITS);
}

/* Decode one element of channel c with state *x; returns its fixed-point value (moving). */
INLINE int64_t decode_one(const Chan *c, uint8_t *row, int64_t pred, Rans64State *x, const uint8_t **pp,
                          const Env *env, const int moving)
{
    KvcMap map = c->map;
    const uint8_t *tab = c->tab;
    if (moving) {
        map = kvc_map_float(&c->ch, pred, NB, EXP_BITS, MANT_BITS, env->e0);
        tab = tables(env, map.ctx);
    }
    const uint32_t *dec = (const uint32_t *)(tab + DEC_AT);
    const uint16_t *bucket = (const uint16_t *)(tab + BUCKET_AT);
    uint64_t r = *x;
    uint32_t s = (uint32_t)r & (KVC_PROB_ONE - 1);
    uint32_t raw = (uint32_t)(r >> KVC_PROB_BITS) & ((1u << RAW_BITS) - 1);
    const uint32_t *e = dec + bucket[s >> KVC_BUCKET_SHIFT];
    while (KVC_DEC_START(e[1]) <= s)
        e++;
    uint32_t start = KVC_DEC_START(e[0]);
    r = (uint64_t)(KVC_DEC_START(e[1]) - start) * (r >> SCALE) + (s - start);
    /* renormalise without a branch: whether a word is needed is close to random */
    uint64_t need = r < RANS64_L;
    *x = (r << (need * 32)) | (rans64_load_le32(*pp) & (0 - need));
    *pp += need * 4;
    int h = h_of(c, &map, KVC_DEC_SYM(e[0]));
    store_le16(row + c->off, ((uint32_t)h << RAW_BITS) | raw);
    return moving ? kvc_float_value(env->vt, h, raw) : 0;
}

/* The moving average of each channel, then (pairs) the rotation of each pair; lanes[i] is
 * channel i's lane. */
INLINE void update(int64_t *pred, const int64_t *v, const KvcLane *lanes, const int paired)
{
    if (!paired) {
        for (int i = 0; i < 4; i++)
            pred[i] += ((v[i] - pred[i]) * lanes[i].alpha_q8) >> 8;
        return;
    }
    for (int i = 0; i < 4; i += 2) { /* lanes[i] is the lane of the pair (i, i + 1) */
        const KvcLane *ln = &lanes[i];
        int64_t ux = pred[i] + (((v[i] - pred[i]) * ln->alpha_q8) >> 8);
        int64_t uy = pred[i + 1] + (((v[i + 1] - pred[i + 1]) * ln->alpha_q8) >> 8);
        pred[i] = kvc_clamp_pred((ln->cos_q14 * ux - ln->sin_q14 * uy) >> 14);
        pred[i + 1] = kvc_clamp_pred((ln->sin_q14 * ux + ln->cos_q14 * uy) >> 14);
    }
}

INLINE int64_t quad_loop(Coder *cd, Group *g, Rans64State *xs, int64_t t, const int moving, const int paired)
{
    Chan c[4];
    int64_t pred[4], v[4];
    Rans64State x[4];
    KvcLane lanes[4];
    uint8_t *row = g->m[0].p;
    ptrdiff_t stride = g->m[0].stride;
    for (int i = 0; i < 4; i++) {
        c[i].off = g->m[i].p - row;
        c[i].ch = *g->m[i].ch;
        c[i].map = g->m[i].map;
        c[i].tab = moving ? NULL : (const uint8_t *)g->m[i].tab->enc;
        c[i].near_add = ((uint32_t)-c[i].ch.exp_rot & ((1u << EXP_BITS) - 1)) << (NB - 1 - EXP_BITS);
        pred[i] = g->m[i].pred;
        x[i] = xs[i];
        lanes[i] = g->lanes[paired ? i / 2 : i];
    }
    const Env env = {cd->s->set, cd->s->set->ctx, cd->s->set->mem, cd->s->fmt, cd->vt, cd->e0};
    const uint8_t *p = cd->p, *end = cd->end;
    const int64_t n_tokens = cd->s->n_tokens;
    for (; t < n_tokens && end - p >= 16; t++) {
        v[0] = decode_one(&c[0], row, pred[0], &x[0], &p, &env, moving);
        v[1] = decode_one(&c[1], row, pred[1], &x[1], &p, &env, moving);
        v[2] = decode_one(&c[2], row, pred[2], &x[2], &p, &env, moving);
        v[3] = decode_one(&c[3], row, pred[3], &x[3], &p, &env, moving);
        row += stride;
        if (moving)
            update(pred, v, lanes, paired);
    }
    for (int i = 0; i < 4; i++) {
        g->m[i].p = row + c[i].off;
        g->m[i].pred = pred[i];
        g->m[i].map_pred = pred[i] ^ 1; /* the generic loop recomputes the maps */
        xs[i] = x[i];
    }
    cd->p = p;
    return t;
}

int64_t kvc_quad_decode_f16(Coder *cd, Group *g, Rans64State *x, int moving, int64_t t0)
{
    if (cd->s->set->per_ctx != PER_CTX || cd->s->fmt->mant_bits != MANT_BITS)
        return t0;
    for (int i = 1; i < 4; i++)
        if (g->m[i].stride != g->m[0].stride)
            return t0;
    if (!moving)
        return quad_loop(cd, g, x, t0, 0, 0);
    return g->paired ? quad_loop(cd, g, x, t0, 1, 1) : quad_loop(cd, g, x, t0, 1, 0);
}
