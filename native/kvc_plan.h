/*
 * kvc_plan.h -- how a tensor of a given ggml type and layout splits into coded sections
 * (internal to the kv_lossless codec).
 */
#ifndef SEQKV_KVC_PLAN_H
#define SEQKV_KVC_PLAN_H

#include "kvc_lanes.h"

#define KVC_MAX_SECTIONS 2

enum {
    KVC_TYPE_F32 = 0,
    KVC_TYPE_F16 = 1,
    KVC_TYPE_Q4_0 = 2,
    KVC_TYPE_Q8_0 = 8,
    KVC_TYPE_BF16 = 30,
};

#define KVC_WS_SETS 4

/* Reusable per-thread state: context tables by format (kept between calls, since they depend
 * on the format only) and scratch buffers. Public as the opaque kvc_workspace. */
struct kvc_workspace {
    KvcCtxSet sets[KVC_WS_SETS];
    uint64_t last_use[KVC_WS_SETS];
    uint64_t clock;
    KvcStep *steps;
    size_t steps_cap;
    uint8_t *buf;
    size_t buf_cap;
    float *vals;          /* the estimator's copy of a section */
    size_t vals_cap;
};

typedef struct {
    int n_sec;
    KvcFormat fmt[KVC_MAX_SECTIONS];
    KvcSection sec[KVC_MAX_SECTIONS];
    KvcCtxSet own_sets[KVC_MAX_SECTIONS]; /* without a workspace */
    KvcChannel *chans; /* all sections' channels */
    KvcLane *lanes;    /* all sections' lanes (room for one per channel) */
} KvcPlan;

/* Sections, formats and channel addresses for a tensor at data; e0 = 0, no lanes yet.
 * Returns SKV_OK, SKV_ERR_UNSUPPORTED or SKV_ERR_MEMORY. */
int kvc_plan_init(KvcPlan *plan, int ggml_type, int token_major, int64_t n_channels, int64_t n_tokens,
                  uint8_t *data);

/* Context sets for every section: the workspace's (ws may be NULL: private ones). */
int kvc_plan_contexts(KvcPlan *plan, struct kvc_workspace *ws);

void kvc_plan_free(KvcPlan *plan);

/* Side information of every section (after the header): size, write, read. */
int64_t kvc_side_size(const KvcPlan *plan);
/* The fewest side-information bytes a coded tensor of n_channels has (3 per channel, block scales included). */
int64_t kvc_side_min_size(int ggml_type, int64_t n_channels);
void kvc_side_write(const KvcPlan *plan, uint8_t *dst);
int kvc_side_read(KvcPlan *plan, const uint8_t *src);

#endif /* SEQKV_KVC_PLAN_H */
