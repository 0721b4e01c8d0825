/*
 * segcode_run.h -- private to the segment coder's CPU driver (segcode.c, segcode2.c): one job over a tensor's
 * segments and the threads that run it.
 */
#ifndef SEQKV_SEGCODE_RUN_H
#define SEQKV_SEGCODE_RUN_H

#include "segcode.h"

typedef struct segc_job segc_job;
typedef int64_t (*segc_segment_fn)(const segc_job *job, int64_t seg, int32_t *scratch);

struct segc_job {
    segc_segment_fn fn;
    uint32_t n_cells, n_channels;
    const int32_t *q;
    const float *fx, *fscale; /* f32 input and inv_step, or step on decode */
    int32_t *q_out;
    float *x_out;
    uint8_t *dst;              /* encode: slots of SEGC_SEGMENT_BOUND bytes from dst + table end */
    const uint8_t *src;        /* decode: the stream */
    const uint64_t *offsets;   /* decode: body offsets, n_segments + 1 */
    int64_t *result;           /* per segment: body size (encode), SKV_OK (decode), or an error */
    /* format 2 */
    Segc2Stats *stats;         /* per segment, per channel of it (SEGC2_CHANNELS each) */
    Segc2Params *params;       /* per channel */
    Segc2Model *models;        /* per channel */
    int32_t *q_work;           /* encode: the indices, each segment's column by column */
    const float *rec_step;     /* encode_f32: the steps of ... */
    float *rec;                /* ... the values the decoder gives back, when wanted */
};

/* Runs job->fn on every segment (job->result[s] gets its result) on up to n_threads threads, each with a
 * SEGC2_CELLS x SEGC2_CHANNELS scratch when need_scratch; SKV_OK or an error of the driver itself. */
int segc_run(const segc_job *job, int64_t n_segments, int n_threads, int need_scratch);

#endif /* SEQKV_SEGCODE_RUN_H */
