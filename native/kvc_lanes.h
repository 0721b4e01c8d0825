/*
 * kvc_lanes.h -- coding loops and parameter estimation of the kv_lossless codec (internal).
 */
#ifndef SEQKV_KVC_LANES_H
#define SEQKV_KVC_LANES_H

#include "kvc_internal.h"

/* A set of channels coded with one format, one set of lanes and one set of contexts. */
typedef struct {
    const KvcFormat *fmt;
    KvcChannel *chans;
    int n_channels;
    KvcLane *lanes;
    int n_lanes;
    int64_t n_tokens;
    KvcCtxSet *set;
} KvcSection;

/* One recorded encoder step: start, and freq | scale << 24 | state << 29 | bypass << 31. */
typedef struct {
    uint32_t start;
    uint32_t fss;
} KvcStep;

size_t kvc_section_steps(const KvcSection *s);
int64_t kvc_model_section(const KvcSection *s, KvcStep *steps);
void kvc_encode_steps(const KvcStep *steps, size_t n, uint8_t **pptr);
int kvc_decode_section(const KvcSection *s, Rans64State *st, const uint8_t **pptr, const uint8_t *end);

/* Encoder: choose lanes (pair_offset 0: none, > 0: pair c with c + offset, < 0: try a few),
 * then each channel's mu and sigma. s->lanes must hold n_channels entries. scratch holds
 * kvc_estimate_floats(s) floats, or is NULL (allocated here). Returns the pair offset used, or
 * -1 when out of memory. */
size_t kvc_estimate_floats(const KvcSection *s);
int kvc_estimate_section(KvcSection *s, int pair_offset, float *scratch);

/* The lanes for a pair offset (0: single channels). Returns the number of lanes. */
int kvc_make_lanes(KvcLane *lanes, int n_channels, int pair_offset);

/* Largest exponent field of the finite FLOAT words of a section (to choose e0). */
int kvc_max_exponent(const KvcSection *s);

/* FLOAT: the word (truncated) of a fixed-point value; used for the stored mu. */
uint32_t kvc_fix_to_word(const KvcFormat *f, int64_t fix);

/* ---- the state of a coding loop (kvc_lanes.c, and the fast loops of kvc_quad.c) ---- */
/* A channel while its group is being coded. */
typedef struct {
    uint8_t *p;          /* this token's element */
    ptrdiff_t stride;
    int64_t pred;        /* prediction of this token's value */
    const KvcChannel *ch;
    int64_t map_pred;    /* the prediction map and tab were computed for */
    KvcMap map;
    KvcCtx *tab;
    KvcAdapt *adapt;     /* INT sections: the channel's adaptive table */
} Member;

/* Fixed-point value of FLOAT bin h with raw low bits r: ((base + r) * mul) >> 16, signed.
 * (Only the predictor uses it: any deterministic approximation would do.) */
typedef struct {
    int64_t mul;
    uint32_t base;
} ValueOfBin;

static inline int64_t kvc_float_value(const ValueOfBin *vt, int h, uint32_t raw)
{
    return ((int64_t)(vt[h].base + raw) * vt[h].mul) >> 16;
}

typedef struct {
    Member m[KVC_GROUP];
    int n;               /* channels in the group */
    int paired;          /* lanes are pairs (m[0], m[1]), (m[2], m[3]) */
    const KvcLane *lanes;
} Group;


/* What one coding loop over a section works with. */
typedef struct {
    const KvcSection *s;
    const ValueOfBin *vt;
    KvcStep *steps;      /* encoder: recorded steps */
    int64_t n;           /* encoder: steps recorded so far */
    const uint8_t *p;    /* decoder: stream position */
    const uint8_t *end;
    int err;             /* decoder: the stream ran out */
    int e0;
} Coder;

/* Fast decoder of a full f16 group (four channels): decodes tokens t0, t0 + 1, ... while the
 * stream has at least 16 bytes left; returns the next token to decode. The members' element
 * pointers and predictions follow; their maps must be recomputed (map_pred is reset). */
int64_t kvc_quad_decode_f16(Coder *cd, Group *g, Rans64State *x, int moving, int64_t t0);

#endif /* SEQKV_KVC_LANES_H */
