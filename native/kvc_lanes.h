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
 * then each channel's mu and sigma. s->lanes must hold n_channels entries. Returns the pair
 * offset used, or -1 when out of memory. */
int kvc_estimate_section(KvcSection *s, int pair_offset);

/* The lanes for a pair offset (0: single channels). Returns the number of lanes. */
int kvc_make_lanes(KvcLane *lanes, int n_channels, int pair_offset);

/* Largest exponent field of the finite FLOAT words of a section (to choose e0). */
int kvc_max_exponent(const KvcSection *s);

/* FLOAT: the word (truncated) of a fixed-point value; used for the stored mu. */
uint32_t kvc_fix_to_word(const KvcFormat *f, int64_t fix);

#endif /* SEQKV_KVC_LANES_H */
