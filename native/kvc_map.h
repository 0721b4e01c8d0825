/*
 * kvc_map.h -- contexts and symbol maps of the kv_lossless codec (inline, hot path).
 *
 * An element's "bin" h is the top nb bits of its 16-bit word (FLOAT: sign | exponent |
 * mantissa prefix) or its two's complement value in nb bits (INT). Given the prediction c of
 * the element and its channel's sigma, kvc_map_*() pick the context and how h becomes a symbol
 * of that context; kvc_sym_*() / kvc_h_*() apply the (bijective) map both ways. The format is
 * passed as scalars so that the coding loops, which pass constants, get specialised code; the
 * context builder passes the same values from its KvcFormat.
 */
#ifndef SEQKV_KVC_MAP_H
#define SEQKV_KVC_MAP_H

#include "kvc_internal.h"

/* inverse of kvc_ord */
static inline int kvc_unord(int o, int A)
{
    return o ^ ((o & (A >> 1)) ? A >> 1 : A - 1);
}

/* The FLOAT bin (without sign) holding a fixed-point magnitude with top bit msb. */
static inline int kvc_float_bin(uint64_t mag, int msb, int nb, int exp_bits, int mant_bits, int e0)
{
    int mb = nb - 1 - exp_bits;
    int m_mask = (1 << mb) - 1;
    int e_max = (1 << exp_bits) - 1;
    int e = msb - mant_bits + 1 + e0;
    if (e >= e_max)
        return ((e_max - 1) << mb) | m_mask;
    if (e >= 1) {
        uint64_t prefix = msb >= mb ? mag >> (msb - mb) : mag << (mb - msb);
        return (e << mb) | (int)(prefix & (uint64_t)m_mask);
    }
    uint64_t m = mag << e0; /* subnormal: mag < 2^(mant_bits - e0) here */
    return (int)(m >> (mant_bits - mb)) & m_mask;
}

/* The map of a "far" prediction c (kvc_map_float, once the near test failed). */
static inline KvcMap kvc_map_far(const KvcChannel *ch, int64_t c, int nb, int exp_bits, int mant_bits, int e0)
{
    KvcMap map;
    int A = 1 << nb;
    int mb = nb - 1 - exp_bits;
    uint64_t mag = c < 0 ? (uint64_t)(-c) : (uint64_t)c;
    int msb = kvc_msb64(mag);
    int bucket = kvc_clamp_int(ch->far_base - 2 * msb, 0, 15);
    int phase = msb >= mb + 2 ? (int)(mag >> (msb - mb - 2)) & 3 : 0;
    int h = kvc_float_bin(mag, msb, nb, exp_bits, mant_bits, e0) | (c < 0 ? A >> 1 : 0);
    map.ctx = KVC_N_NEAR + ((bucket * 4 + phase) << (KVC_FAR_MANT ? mb : 0)) + (KVC_FAR_MANT ? (h & ((1 << mb) - 1)) : 0);
    map.near = 0;
    map.ref_ord = kvc_ord(h, A);
    map.mirror = c < 0;
    return map;
}

/* The context and symbol map of FLOAT prediction c: near when zq (c in steps of the near
 * contexts, rounded) is within +-KVC_NEAR_Z, else far. */
static inline KvcMap kvc_map_float(const KvcChannel *ch, int64_t c, int nb, int exp_bits, int mant_bits, int e0)
{
    KvcMap map;
    /* zq = round((c >> k5) * near_mul / 2^21). When the product overflows, c is far: so it is
     * whenever |c >> k5| > 2^40 (near_mul > 2^17), as with a clamp of c >> k5 to +-2^40. */
    int64_t prod;
    int overflow = __builtin_mul_overflow(c >> ch->k5, ch->near_mul, &prod);
    int64_t zq = (int64_t)((uint64_t)prod + (1u << 20)) >> 21; /* a sum that wraps is far too */
    if (!overflow && (uint64_t)(zq + KVC_NEAR_Z) <= 2 * KVC_NEAR_Z) {
        map.ctx = (int)zq * 4 + ch->near_base;
        map.near = 1;
        map.ref_ord = 0;
        map.mirror = 0;
        return map;
    }
    return kvc_map_far(ch, c, nb, exp_bits, mant_bits, e0);
}

static inline KvcMap kvc_map_int(const KvcChannel *ch, int64_t c)
{
    KvcMap map;
    int64_t fl = c >> 16;
    map.ctx = ch->int_ctx + (int)((c >> 14) & 3);
    map.near = 0;
    map.ref_ord = (int)(fl & 0xffff);
    map.mirror = 0;
    return map;
}

static inline int kvc_sym_float(const KvcChannel *ch, const KvcMap *m, int h, int nb, int exp_bits)
{
    int A = 1 << nb;
    if (m->near) {
        int mb = nb - 1 - exp_bits;
        int e_mask = (1 << exp_bits) - 1;
        int e = (h >> mb) & e_mask;
        return (h & ~(e_mask << mb)) | (((e + ch->exp_rot) & e_mask) << mb);
    }
    int o = kvc_ord(h, A);
    return (m->mirror ? m->ref_ord - o : o - m->ref_ord) & (A - 1);
}

static inline int kvc_h_float(const KvcChannel *ch, const KvcMap *m, int sym, int nb, int exp_bits)
{
    int A = 1 << nb;
    if (m->near) {
        int mb = nb - 1 - exp_bits;
        int e_mask = (1 << exp_bits) - 1;
        int e = (sym >> mb) & e_mask;
        return (sym & ~(e_mask << mb)) | (((e - ch->exp_rot) & e_mask) << mb);
    }
    int o = (m->mirror ? m->ref_ord - sym : m->ref_ord + sym) & (A - 1);
    return kvc_unord(o, A);
}

static inline int kvc_sym_int(const KvcMap *m, int h, int nb)
{
    return (h - m->ref_ord) & ((1 << nb) - 1);
}

static inline int kvc_h_int(const KvcMap *m, int sym, int nb)
{
    return (sym + m->ref_ord) & ((1 << nb) - 1);
}

/* the same, for a format known only at run time (context building) */
static inline KvcMap kvc_map_any(const KvcFormat *f, const KvcChannel *ch, int64_t c)
{
    return f->kind == KVC_KIND_FLOAT ? kvc_map_float(ch, c, f->nb, f->exp_bits, f->mant_bits, f->e0)
                                     : kvc_map_int(ch, c);
}

static inline int kvc_sym_any(const KvcFormat *f, const KvcChannel *ch, const KvcMap *m, int h)
{
    return f->kind == KVC_KIND_FLOAT ? kvc_sym_float(ch, m, h, f->nb, f->exp_bits) : kvc_sym_int(m, h, f->nb);
}

#endif /* SEQKV_KVC_MAP_H */
