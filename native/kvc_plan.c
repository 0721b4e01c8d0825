/*
 * kvc_plan.c -- sections of a tensor and their side information (kv_lossless codec).
 *
 * f16 / bf16 / f32: one FLOAT section of n_channels channels.
 * q8_0 / q4_0: a FLOAT (f16) section of the block scales, one channel per block of the row,
 * then an INT section of the quantized values, one channel per element of the row.
 *
 * Side information, per section: for every channel mu (u16: the FLOAT word, or INT mu in
 * 1/256 as i16) and sigma (u8: k << 2 | p); then for every lane alpha (u8) and, for pairs,
 * cos and sin (i16, Q14). All little-endian.
 */
#include <stdlib.h>
#include <string.h>

#include "kvc_plan.h"
#include "kvcodec.h"

static const KvcFormat FMT_F16 = {KVC_KIND_FLOAT, KVC_ELEM_W16, KVC_F16_NB, 16 - KVC_F16_NB, 0, 10, 5, 0};
static const KvcFormat FMT_BF16 = {KVC_KIND_FLOAT, KVC_ELEM_W16, KVC_BF16_NB, 16 - KVC_BF16_NB, 0, 7, 8, 0};
static const KvcFormat FMT_F32 = {KVC_KIND_FLOAT, KVC_ELEM_W32, KVC_BF16_NB, 16 - KVC_BF16_NB, 16, 7, 8, 0};
static const KvcFormat FMT_Q8 = {KVC_KIND_INT, KVC_ELEM_I8, 8, 0, 0, 0, 0, 0};
static const KvcFormat FMT_Q4 = {KVC_KIND_INT, KVC_ELEM_NIB, 4, 0, 0, 0, 0, 0};

static void set_section(KvcPlan *plan, int i, const KvcFormat *fmt, KvcChannel *chans, int n_channels,
                        KvcLane *lanes, int64_t n_tokens)
{
    plan->fmt[i] = *fmt;
    KvcSection *s = &plan->sec[i];
    s->fmt = &plan->fmt[i];
    s->chans = chans;
    s->n_channels = n_channels;
    s->lanes = lanes;
    s->n_lanes = 0;
    s->n_tokens = n_tokens;
    s->set = NULL;
}

static void plain_channels(KvcChannel *chans, int64_t n_channels, int64_t n_tokens, int elem_size,
                           int token_major, uint8_t *data)
{
    for (int64_t c = 0; c < n_channels; c++) {
        chans[c].base = data + (token_major ? c * elem_size : c * n_tokens * elem_size);
        chans[c].stride = token_major ? n_channels * elem_size : elem_size;
    }
}

static void block_channels(KvcChannel *chans, int64_t n_channels, int64_t row, int block_bytes,
                           int nibbles, uint8_t *data)
{
    int64_t n_blocks = n_channels / 32;
    for (int64_t b = 0; b < n_blocks; b++) {
        chans[b].base = data + b * block_bytes;
        chans[b].stride = row;
    }
    KvcChannel *vals = chans + n_blocks;
    for (int64_t j = 0; j < n_channels; j++) {
        int64_t b = j / 32, i = j % 32;
        vals[j].base = data + b * block_bytes + 2 + (nibbles ? i % 16 : i);
        vals[j].nib_shift = nibbles ? (int)(i / 16) * 4 : 0;
        vals[j].scale_off = -(2 + (nibbles ? i % 16 : i)) + 1;
        vals[j].stride = row;
    }
}

int kvc_plan_init(KvcPlan *plan, int ggml_type, int token_major, int64_t n_channels, int64_t n_tokens,
                  uint8_t *data)
{
    int blocks = ggml_type == KVC_TYPE_Q8_0 || ggml_type == KVC_TYPE_Q4_0;
    int64_t n_all = n_channels + (blocks ? n_channels / 32 : 0);
    memset(plan, 0, sizeof(*plan));
    if (blocks && !token_major)
        return SKV_ERR_UNSUPPORTED;
    plan->chans = calloc((size_t)(n_all ? n_all : 1), sizeof(KvcChannel));
    plan->lanes = calloc((size_t)(n_all ? n_all : 1), sizeof(KvcLane));
    if (!plan->chans || !plan->lanes) {
        kvc_plan_free(plan);
        return SKV_ERR_MEMORY;
    }
    if (!blocks) {
        int elem = ggml_type == KVC_TYPE_F32 ? 4 : 2;
        const KvcFormat *fmt = ggml_type == KVC_TYPE_F16 ? &FMT_F16
                             : ggml_type == KVC_TYPE_BF16 ? &FMT_BF16 : &FMT_F32;
        plain_channels(plan->chans, n_channels, n_tokens, elem, token_major, data);
        set_section(plan, 0, fmt, plan->chans, (int)n_channels, plan->lanes, n_tokens);
        plan->n_sec = 1;
        return SKV_OK;
    }
    int q8 = ggml_type == KVC_TYPE_Q8_0;
    int block_bytes = q8 ? 34 : 18;
    int64_t n_blocks = n_channels / 32;
    block_channels(plan->chans, n_channels, n_blocks * block_bytes, block_bytes, !q8, data);
    set_section(plan, 0, &FMT_F16, plan->chans, (int)n_blocks, plan->lanes, n_tokens);
    set_section(plan, 1, q8 ? &FMT_Q8 : &FMT_Q4, plan->chans + n_blocks, (int)n_channels,
                plan->lanes + n_blocks, n_tokens);
    plan->n_sec = 2;
    return SKV_OK;
}

static int same_tables(const KvcFormat *a, const KvcFormat *b)
{
    return a->kind == b->kind && a->nb == b->nb && a->raw_bits == b->raw_bits && a->mant_bits == b->mant_bits &&
           a->exp_bits == b->exp_bits && a->e0 == b->e0;
}

static int n_contexts(const KvcFormat *f)
{
    return f->kind == KVC_KIND_FLOAT ? KVC_N_CTX_FLOAT : KVC_N_CTX_INT;
}

/* The workspace's set for format f: a cached one, or a fresh one in the least recently used slot. */
static KvcCtxSet *workspace_set(struct kvc_workspace *ws, const KvcFormat *f)
{
    int lru = 0;
    ws->clock++;
    for (int i = 0; i < KVC_WS_SETS; i++) {
        if (ws->sets[i].mem && same_tables(&ws->sets[i].fmt, f)) {
            ws->last_use[i] = ws->clock;
            return &ws->sets[i];
        }
        if (ws->last_use[i] < ws->last_use[lru])
            lru = i;
    }
    if (ws->sets[lru].mem)
        kvc_ctxset_free(&ws->sets[lru]);
    if (kvc_ctxset_init(&ws->sets[lru], f, n_contexts(f)))
        return NULL;
    ws->last_use[lru] = ws->clock;
    return &ws->sets[lru];
}

int kvc_plan_contexts(KvcPlan *plan, struct kvc_workspace *ws)
{
    for (int i = 0; i < plan->n_sec; i++) {
        const KvcFormat *f = &plan->fmt[i];
        if (ws) {
            plan->sec[i].set = workspace_set(ws, f);
            if (!plan->sec[i].set)
                return SKV_ERR_MEMORY;
        } else {
            if (kvc_ctxset_init(&plan->own_sets[i], f, n_contexts(f)))
                return SKV_ERR_MEMORY;
            plan->sec[i].set = &plan->own_sets[i];
        }
    }
    return SKV_OK;
}

void kvc_plan_free(KvcPlan *plan)
{
    for (int i = 0; i < KVC_MAX_SECTIONS; i++)
        if (plan->own_sets[i].mem)
            kvc_ctxset_free(&plan->own_sets[i]);
    free(plan->chans);
    free(plan->lanes);
    plan->chans = NULL;
    plan->lanes = NULL;
}

int64_t kvc_side_min_size(int ggml_type, int64_t n_channels)
{
    int blocks = ggml_type == KVC_TYPE_Q8_0 || ggml_type == KVC_TYPE_Q4_0;
    return 3 * (n_channels + (blocks ? n_channels / 32 : 0));
}

int64_t kvc_side_size(const KvcPlan *plan)
{
    int64_t size = 0;
    for (int i = 0; i < plan->n_sec; i++) {
        const KvcSection *s = &plan->sec[i];
        size += 3 * (int64_t)s->n_channels;
        for (int l = 0; l < s->n_lanes; l++)
            size += s->lanes[l].ch[1] < 0 ? 1 : 5;
    }
    return size;
}

static uint8_t *put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    return p + 2;
}

static uint32_t get16(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8);
}

void kvc_side_write(const KvcPlan *plan, uint8_t *dst)
{
    for (int i = 0; i < plan->n_sec; i++) {
        const KvcSection *s = &plan->sec[i];
        for (int c = 0; c < s->n_channels; c++) {
            const KvcChannel *ch = &s->chans[c];
            dst = put16(dst, ch->mu_word);
            *dst++ = (uint8_t)(ch->sigma_k << 2 | ch->sigma_p);
        }
        for (int l = 0; l < s->n_lanes; l++) {
            const KvcLane *ln = &s->lanes[l];
            *dst++ = (uint8_t)ln->alpha_q8;
            if (ln->ch[1] >= 0) {
                dst = put16(dst, (uint32_t)(uint16_t)(int16_t)ln->cos_q14);
                dst = put16(dst, (uint32_t)(uint16_t)(int16_t)ln->sin_q14);
            }
        }
    }
}

static int read_channel(const KvcFormat *f, KvcChannel *ch, const uint8_t *p)
{
    ch->mu_word = get16(p);
    ch->mu = f->kind == KVC_KIND_FLOAT ? kvc_float_to_fix(f, ch->mu_word) : (int64_t)(int16_t)ch->mu_word * 256;
    ch->sigma_k = p[2] >> 2;
    ch->sigma_p = p[2] & 3;
    if (ch->sigma_k < 6 || ch->sigma_k > 60)
        return SKV_ERR_CORRUPT;
    kvc_channel_derive(ch, f);
    return SKV_OK;
}

static int read_lane(KvcLane *ln, const uint8_t *p)
{
    ln->alpha_q8 = p[0];
    if (ln->alpha_q8 > 128)
        return SKV_ERR_CORRUPT;
    if (ln->ch[1] < 0)
        return SKV_OK;
    ln->cos_q14 = (int16_t)get16(p + 1);
    ln->sin_q14 = (int16_t)get16(p + 3);
    if (ln->cos_q14 < -16384 || ln->cos_q14 > 16384 || ln->sin_q14 < -16384 || ln->sin_q14 > 16384)
        return SKV_ERR_CORRUPT;
    return SKV_OK;
}

/* The caller checked that kvc_side_size() bytes are available at src (lanes made first). */
int kvc_side_read(KvcPlan *plan, const uint8_t *src)
{
    for (int i = 0; i < plan->n_sec; i++) {
        KvcSection *s = &plan->sec[i];
        for (int c = 0; c < s->n_channels; c++, src += 3)
            if (read_channel(s->fmt, &s->chans[c], src))
                return SKV_ERR_CORRUPT;
        for (int l = 0; l < s->n_lanes; l++) {
            if (read_lane(&s->lanes[l], src))
                return SKV_ERR_CORRUPT;
            src += s->lanes[l].ch[1] < 0 ? 1 : 5;
        }
    }
    return SKV_OK;
}
