/*
 * kvc_lanes.c -- the coding loops of the kv_lossless codec.
 *
 * Lanes (a channel, or a RoPE pair sharing a rotating predictor) are packed in order into
 * groups of at most KVC_GROUP channels. A group is coded token by token; within a token its
 * channels are coded in order, step j of the token using rANS state j % KVC_N_STATES, so the
 * states interleave. The encoder runs the model forward and records every step (start, freq,
 * scale, state); kvc_encode_steps() then codes them backwards. The decoder does both at once.
 *
 * The loops are written once (loop_section) and specialised per element format, and for the
 * encoder or the decoder, with constant arguments, so the compiler removes every format test
 * from the inner loop. The decoder hands
 * full groups of f16 channels to the faster loop of kvc_quad.c.
 */
#include <string.h>

#include "kvc_internal.h"
#include "kvc_lanes.h"
#include "kvc_map.h"

#define STEP_BYPASS (1u << 31)
#define KVC_LOOP_MEMORY (-2)
#define INLINE static inline __attribute__((always_inline))

static void value_table(const KvcFormat *f, ValueOfBin *vt)
{
    int A = 1 << f->nb, max_sh = 43 - f->mant_bits;
    uint32_t m_mask = (1u << f->mant_bits) - 1;
    for (int h = 0; h < A; h++) {
        uint32_t word = (uint32_t)h << f->raw_bits;
        uint32_t e = (word >> f->mant_bits) & ((1u << f->exp_bits) - 1);
        int sh = (e ? (int)e - 1 : 0) - f->e0;
        sh = sh > max_sh ? max_sh : (sh < -16 ? -16 : sh);
        vt[h].base = (word & m_mask) | (e ? 1u << f->mant_bits : 0);
        vt[h].mul = ((int64_t)1 << (sh + 16)) * (h >> (f->nb - 1) ? -1 : 1);
    }
}

INLINE int64_t int_value(int nb, int h)
{
    return (int64_t)(h & (1 << (nb - 1)) ? h - (1 << nb) : h) * 65536;
}

/* Element access: read the bin h, raw bits and f32 low half; write them back. */
/* INT values are coded times the sign of their block's scale: h <-> -h when it is negative. */
INLINE int scale_sign_flip(const Member *m, int nb, int h)
{
    int neg = m->p[m->ch->scale_off] >> 7;
    return neg ? (-h) & ((1 << nb) - 1) : h;
}

INLINE int read_elem(const Member *m, int elem, int raw_bits, uint32_t *raw, uint32_t *extra)
{
    const uint8_t *p = m->p;
    if (elem == KVC_ELEM_I8)
        return scale_sign_flip(m, 8, p[0]);
    if (elem == KVC_ELEM_NIB)
        return scale_sign_flip(m, 4, ((p[0] >> m->ch->nib_shift) & 15) ^ 8);
    if (elem == KVC_ELEM_W32) {
        *extra = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
        p += 2;
    }
    uint32_t word = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
    *raw = word & ((1u << raw_bits) - 1);
    return (int)(word >> raw_bits);
}

INLINE void write_elem(const Member *m, int elem, int raw_bits, int h, uint32_t raw, uint32_t extra)
{
    uint8_t *p = m->p;
    if (elem == KVC_ELEM_I8) {
        p[0] = (uint8_t)scale_sign_flip(m, 8, h);
        return;
    }
    if (elem == KVC_ELEM_NIB) {
        int sh = m->ch->nib_shift;
        p[0] = (uint8_t)((p[0] & ~(15 << sh)) | (((scale_sign_flip(m, 4, h) ^ 8) & 15) << sh));
        return;
    }
    if (elem == KVC_ELEM_W32) {
        p[0] = (uint8_t)extra;
        p[1] = (uint8_t)(extra >> 8);
        p += 2;
    }
    uint32_t word = ((uint32_t)h << raw_bits) | raw;
    p[0] = (uint8_t)word;
    p[1] = (uint8_t)(word >> 8);
}

/* The next group of lanes starting at lane *l (advanced past it). */
/* The adaptive table of an INT channel, primed with its Gaussian context table. */
static int init_adapt(const KvcSection *s, Member *m, KvcAdapt *a)
{
    KvcMap map = kvc_map_int(m->ch, m->ch->mu);
    KvcCtx *prior = &s->set->ctx[map.ctx];
    if (!prior->enc)
        kvc_ctx_build(s->set, map.ctx, s->fmt);
    m->adapt = a;
    return kvc_adapt_init(a, 1 << s->fmt->nb, prior);
}

static int next_group(const KvcSection *s, int *l, Group *g)
{
    g->n = 0;
    g->lanes = &s->lanes[*l];
    g->paired = s->lanes[*l].ch[1] >= 0;
    while (*l < s->n_lanes) {
        const KvcLane *ln = &s->lanes[*l];
        int width = ln->ch[1] < 0 ? 1 : 2;
        if (g->n + width > KVC_GROUP)
            break;
        for (int i = 0; i < width; i++) {
            const KvcChannel *ch = &s->chans[ln->ch[i]];
            Member *m = &g->m[g->n++];
            m->p = ch->base;
            m->stride = ch->stride;
            m->pred = ch->mu;
            m->ch = ch;
            m->map_pred = ch->mu ^ 1; /* differs from pred: compute the map on first use */
            m->tab = NULL;
        }
        (*l)++;
    }
    return g->n;
}

INLINE void update_group(Group *g, const int64_t *v)
{
    if (!g->paired) {
        for (int i = 0; i < g->n; i++) {
            int64_t a = g->lanes[i].alpha_q8;
            g->m[i].pred += ((v[i] - g->m[i].pred) * a) >> 8;
        }
        return;
    }
    for (int i = 0; i < g->n; i += 2) {
        const KvcLane *ln = &g->lanes[i / 2];
        int64_t a = ln->alpha_q8;
        int64_t ux = g->m[i].pred + (((v[i] - g->m[i].pred) * a) >> 8);
        int64_t uy = g->m[i + 1].pred + (((v[i + 1] - g->m[i + 1].pred) * a) >> 8);
        g->m[i].pred = kvc_clamp_pred((ln->cos_q14 * ux - ln->sin_q14 * uy) >> 14);
        g->m[i + 1].pred = kvc_clamp_pred((ln->sin_q14 * ux + ln->cos_q14 * uy) >> 14);
    }
}

INLINE KvcCtx *context_for(const KvcSection *s, const KvcMap *map)
{
    KvcCtx *t = &s->set->ctx[map->ctx];
    if (__builtin_expect(!t->enc, 0))
        kvc_ctx_build(s->set, map->ctx, s->fmt);
    return t;
}

size_t kvc_section_steps(const KvcSection *s)
{
    size_t per_elem = s->fmt->extra_bits ? 2 : 1;
    size_t n_channels = 0;
    for (int l = 0; l < s->n_lanes; l++)
        n_channels += s->lanes[l].ch[1] < 0 ? 1 : 2;
    return n_channels * (size_t)s->n_tokens * per_elem;
}

INLINE int decode_symbol(const KvcCtx *tab, Rans64State *r, uint32_t scale, uint32_t *raw,
                         const uint8_t **pptr, const uint8_t *end, int *err, const int bucket_shift)
{
    uint32_t slot = rans64_dec_get(r, scale);
    uint32_t s = slot & (KVC_PROB_ONE - 1);
    const uint32_t *e = &tab->dec[tab->bucket[s >> bucket_shift]];
    while (KVC_DEC_START(e[1]) <= s)
        e++;
    uint32_t start = KVC_DEC_START(e[0]);
    *raw = slot >> KVC_PROB_BITS;
    rans64_dec_advance(r, pptr, end, (*raw << KVC_PROB_BITS) + start, KVC_DEC_START(e[1]) - start, scale, err);
    return (int)KVC_DEC_SYM(e[0]);
}

/* Code one element of member m with rANS states x[j0] (and x[j0 + 1] for an f32 low half);
 * returns its fixed-point value. All format arguments are compile-time constants. */
INLINE int64_t code_elem(Coder *cd, Member *m, Rans64State *x, const int j0, const int decode, const int kind,
                         const int elem, const int nb, const int raw_bits, const int extra_bits,
                         const int exp_bits, const int mant_bits, const int moving)
{
    const uint32_t scale = KVC_PROB_BITS + (uint32_t)raw_bits;
    if (kind == KVC_KIND_INT) {
        m->map = kvc_map_int(m->ch, m->pred);
        m->tab = &m->adapt->tab;
    } else if (moving && m->pred != m->map_pred) { /* constant predictions keep their context */
        m->map = kvc_map_float(m->ch, m->pred, nb, exp_bits, mant_bits, cd->e0);
        m->tab = context_for(cd->s, &m->map);
        m->map_pred = m->pred;
    }
    const KvcMap map = m->map;
    KvcCtx *tab = m->tab;
    const int bucket_shift = kind == KVC_KIND_INT ? KVC_PROB_BITS - KVC_ADAPT_BUCKET_BITS : KVC_BUCKET_SHIFT;
    uint32_t raw = 0, extra = 0;
    int h, sym;
    if (decode) {
        sym = decode_symbol(tab, &x[j0 % KVC_N_STATES], scale, &raw, &cd->p, cd->end, &cd->err, bucket_shift);
        if (extra_bits)
            extra = rans64_dec_get_bits(&x[(j0 + 1) % KVC_N_STATES], &cd->p, cd->end, 16, &cd->err);
        h = kind == KVC_KIND_FLOAT ? kvc_h_float(m->ch, &map, sym, nb, exp_bits) : kvc_h_int(&map, sym, nb);
        write_elem(m, elem, raw_bits, h, raw, extra);
    } else {
        h = read_elem(m, elem, raw_bits, &raw, &extra);
        sym = kind == KVC_KIND_FLOAT ? kvc_sym_float(m->ch, &map, h, nb, exp_bits) : kvc_sym_int(&map, h, nb);
        KvcStep *st = &cd->steps[cd->n];
        uint64_t se = kvc_enc_get(tab->enc, sym);
        st[0].start = (raw << KVC_PROB_BITS) + (uint32_t)se;
        st[0].fss = (uint32_t)(se >> 32) | (scale << 24) | ((uint32_t)(j0 % KVC_N_STATES) << 29);
        if (extra_bits) {
            st[1].start = extra;
            st[1].fss = STEP_BYPASS | (16u << 24) | ((uint32_t)((j0 + 1) % KVC_N_STATES) << 29);
        }
        cd->n += extra_bits ? 2 : 1;
    }
    if (kind == KVC_KIND_INT)
        kvc_adapt_update(m->adapt, sym, 1 << nb);
    m->p += m->stride;
    if (!moving)
        return 0;
    return kind == KVC_KIND_FLOAT ? kvc_float_value(cd->vt, h, raw) : int_value(nb, h);
}

#define CODE_ELEM(i, moving) code_elem(cd, &g->m[i], x, (i) * (extra_bits ? 2 : 1), decode, kind, elem, nb, \
                                       raw_bits, extra_bits, exp_bits, mant_bits, moving)

/* True when no prediction of the group ever changes (no EMA, no rotation). */
static int group_is_static(const Group *g)
{
    for (int i = 0; i < g->n; i += g->paired ? 2 : 1) {
        const KvcLane *ln = &g->lanes[g->paired ? i / 2 : i];
        if (ln->alpha_q8 || (g->paired && (ln->cos_q14 != 1 << 14 || ln->sin_q14)))
            return 0;
    }
    return 1;
}

/* One group, all tokens: unrolled for full groups of four, generic for the rest. */
INLINE void code_group(Coder *cd, Group *g, Rans64State *x, const int decode, const int kind, const int elem,
                       const int nb, const int raw_bits, const int extra_bits, const int exp_bits,
                       const int mant_bits)
{
    int64_t v[KVC_GROUP], t = 0;
    const int quad_f16 = decode && kind == KVC_KIND_FLOAT && elem == KVC_ELEM_W16 && nb == KVC_F16_NB;
    if (g->n == 4 && kind == KVC_KIND_FLOAT && group_is_static(g)) {
        for (int i = 0; i < 4; i++) { /* the contexts are fixed: find them once */
            g->m[i].map = kvc_map_float(g->m[i].ch, g->m[i].pred, nb, exp_bits, mant_bits, cd->e0);
            g->m[i].tab = context_for(cd->s, &g->m[i].map);
        }
        if (quad_f16)
            t = kvc_quad_decode_f16(cd, g, x, 0, t);
        for (; t < cd->s->n_tokens; t++) {
            CODE_ELEM(0, 0);
            CODE_ELEM(1, 0);
            CODE_ELEM(2, 0);
            CODE_ELEM(3, 0);
        }
        return;
    }
    if (g->n == 4) {
        if (quad_f16)
            t = kvc_quad_decode_f16(cd, g, x, 1, t);
        for (; t < cd->s->n_tokens; t++) {
            v[0] = CODE_ELEM(0, 1);
            v[1] = CODE_ELEM(1, 1);
            v[2] = CODE_ELEM(2, 1);
            v[3] = CODE_ELEM(3, 1);
            update_group(g, v);
        }
        return;
    }
    for (; t < cd->s->n_tokens; t++) {
        for (int i = 0; i < g->n; i++)
            v[i] = CODE_ELEM(i, 1);
        update_group(g, v);
    }
}

/* Encoder (steps != NULL) or decoder (st != NULL) over one section, for one element format.
 * Returns the number of recorded steps (encoder), or 0 / -1 (decoder: stream ran out). */
INLINE int64_t loop_section(const KvcSection *s, KvcStep *steps, Rans64State *st, const uint8_t **pptr,
                            const uint8_t *end, const int decode, const int kind, const int elem, const int nb,
                            const int raw_bits, const int extra_bits, const int exp_bits, const int mant_bits)
{
    ValueOfBin vt[kind == KVC_KIND_FLOAT ? 1 << nb : 1];
    if (kind == KVC_KIND_FLOAT)
        value_table(s->fmt, vt);
    Coder cd = {s, vt, steps, 0, decode ? *pptr : NULL, end, 0, s->fmt->e0};
    Rans64State x[KVC_N_STATES] = {0};
    KvcAdapt adapt[KVC_GROUP];
    if (decode)
        memcpy(x, st, sizeof(x));
    Group g;
    for (int l = 0; l < s->n_lanes && !cd.err;) {
        next_group(s, &l, &g);
        int n_adapt = 0, failed = 0;
        for (; kind == KVC_KIND_INT && n_adapt < g.n && !failed; n_adapt++)
            failed = init_adapt(s, &g.m[n_adapt], &adapt[n_adapt]);
        if (!failed)
            code_group(&cd, &g, x, decode, kind, elem, nb, raw_bits, extra_bits, exp_bits, mant_bits);
        for (int i = 0; i < n_adapt - failed; i++)
            kvc_adapt_free(&adapt[i]);
        if (failed)
            return KVC_LOOP_MEMORY;
    }
    if (!decode)
        return cd.n;
    memcpy(st, x, sizeof(x));
    *pptr = cd.p;
    return cd.err ? -1 : 0;
}

/* Specialised for encoding or decoding (decode is a constant), and per format. */
INLINE int64_t run_section(const KvcSection *s, KvcStep *steps, Rans64State *st, const uint8_t **pptr,
                           const uint8_t *end, const int decode)
{
    switch (s->fmt->elem) {
    case KVC_ELEM_I8:
        return loop_section(s, steps, st, pptr, end, decode, KVC_KIND_INT, KVC_ELEM_I8, 8, 0, 0, 0, 0);
    case KVC_ELEM_NIB:
        return loop_section(s, steps, st, pptr, end, decode, KVC_KIND_INT, KVC_ELEM_NIB, 4, 0, 0, 0, 0);
    case KVC_ELEM_W32:
        return loop_section(s, steps, st, pptr, end, decode, KVC_KIND_FLOAT, KVC_ELEM_W32, KVC_BF16_NB,
                            16 - KVC_BF16_NB, 16, 8, 7);
    default:
        if (s->fmt->mant_bits == 7)
            return loop_section(s, steps, st, pptr, end, decode, KVC_KIND_FLOAT, KVC_ELEM_W16, KVC_BF16_NB,
                                16 - KVC_BF16_NB, 0, 8, 7);
        return loop_section(s, steps, st, pptr, end, decode, KVC_KIND_FLOAT, KVC_ELEM_W16, KVC_F16_NB,
                            16 - KVC_F16_NB, 0, 5, 10);
    }
}

/* Model pass of the encoder: append this section's steps to steps[]; returns the count, or -2
 * when out of memory. */
int64_t kvc_model_section(const KvcSection *s, KvcStep *steps)
{
    return run_section(s, steps, NULL, NULL, NULL, 0);
}

/* Decode one section into the channels' memory; returns 0, -1 if the stream ran out, -2 when out
 * of memory. */
int kvc_decode_section(const KvcSection *s, Rans64State *st, const uint8_t **pptr, const uint8_t *end)
{
    return (int)run_section(s, NULL, st, pptr, end, 1);
}

/* rans64_enc_put() / rans64_enc_put_bits() (freq 1) without a branch on the renormalisation
 * (whether a word goes out is close to random): the low word is always stored below *p, which
 * moves only when the word is kept. That store stays in the buffer: at most one word was
 * written per step coded so far, and the buffer holds one per step plus the flushed states. */
static inline void put_step(Rans64State *r, uint8_t **p, uint32_t start, uint32_t freq, uint32_t scale,
                            int bypass)
{
    uint64_t x = *r;
    uint64_t emit = x >= ((RANS64_L >> scale) << 32) * freq;
    rans64_store_le32(*p - 4, (uint32_t)x);
    *p -= emit * 4;
    x >>= emit * 32;
    *r = bypass ? (x << scale) | start : ((x / freq) << scale) + (x % freq) + start;
}

INLINE void put_recorded(Rans64State *r, uint8_t **p, const KvcStep *step)
{
    uint32_t fss = step->fss, scale = (fss >> 24) & 31;
    if (fss & STEP_BYPASS)
        put_step(r, p, step->start, 1, scale, 1);
    else
        put_step(r, p, step->start, fss & 0xffffff, scale, 0);
}

/* Code recorded steps backwards into the bytes ending at *pptr; then flush the states. Runs of
 * four steps with states 0, 1, 2, 3 (full groups) keep the states and the write position in
 * registers (*pptr could alias the words stored); other steps go through the array. */
void kvc_encode_steps(const KvcStep *steps, size_t n, uint8_t **pptr)
{
    Rans64State st[KVC_N_STATES];
    uint8_t *p = *pptr;
    for (int i = 0; i < KVC_N_STATES; i++)
        rans64_enc_init(&st[i]);
    Rans64State x0 = st[0], x1 = st[1], x2 = st[2], x3 = st[3];
    size_t i = n;
    while (i > 0) {
        for (; i >= 4; i -= 4) {
            const KvcStep *q = &steps[i - 4];
            uint32_t states = (q[0].fss >> 29 & 3) | (q[1].fss >> 27 & 12) | (q[2].fss >> 25 & 48) |
                              (q[3].fss >> 23 & 192);
            if (states != 0xe4) /* 3, 2, 1, 0 from the top */
                break;
            put_recorded(&x3, &p, &q[3]);
            put_recorded(&x2, &p, &q[2]);
            put_recorded(&x1, &p, &q[1]);
            put_recorded(&x0, &p, &q[0]);
        }
        st[0] = x0, st[1] = x1, st[2] = x2, st[3] = x3;
        for (int k = 0; k < 4 && i > 0; k++) { /* out of step: a few steps one at a time */
            i--;
            put_recorded(&st[(steps[i].fss >> 29) & 3], &p, &steps[i]);
        }
        x0 = st[0], x1 = st[1], x2 = st[2], x3 = st[3];
    }
    for (int k = KVC_N_STATES; k-- > 0;)
        rans64_enc_flush(&st[k], &p);
    *pptr = p;
}
