/*
 * segcode.c -- the CPU driver of the segment coder (segcode.h): segments split across pthreads in
 * contiguous ranges (segc_run, shared with format 2 in segcode2.c); each segment is coded by segcode_core.h, the
 * code the CUDA kernels run. This file: format 1.
 */
#define _POSIX_C_SOURCE 200809L
#if defined(__GNUC__) && !defined(__clang__)
/* lets GCC vectorise the quantizer's selects (no floating-point exception is observed; no result changes) */
#pragma GCC optimize("no-trapping-math")
#endif
#include "segcode_run.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

int64_t segc_segment_count(uint32_t n_cells, uint32_t n_channels)
{
    if (n_cells == 0 || n_channels == 0)
        return SKV_ERR_ARGUMENT;
    return (int64_t)segc_segment_total(n_cells, n_channels);
}

static int64_t segc_table_end(int64_t n_segments)
{
    return SEGC_HEADER_SIZE + 4 * n_segments;
}

int64_t segc_encode_bound(uint32_t n_cells, uint32_t n_channels)
{
    int64_t n_seg = segc_segment_count(n_cells, n_channels);
    return n_seg < 0 ? n_seg : segc_table_end(n_seg) + n_seg * (int64_t)SEGC_SEGMENT_BOUND;
}

/* ---- running segments on threads ---------------------------------------------------------------------- */

typedef struct {
    const segc_job *job;
    int64_t first, last;
    int32_t *scratch;
} segc_range;

static void *segc_run_range(void *arg)
{
    segc_range *range = (segc_range *)arg;
    for (int64_t s = range->first; s < range->last; s++)
        range->job->result[s] = range->job->fn(range->job, s, range->scratch);
    return NULL;
}

/* Runs job->fn on every segment; returns SKV_OK or an error of the driver itself (not of a segment). */
int segc_run(const segc_job *job, int64_t n_segments, int n_threads, int need_scratch)
{
    segc_range ranges[SEGC_MAX_THREADS] = {{0}};
    pthread_t threads[SEGC_MAX_THREADS];
    int n = n_threads < 1 ? 1 : n_threads > SEGC_MAX_THREADS ? SEGC_MAX_THREADS : n_threads, t, started = 0;
    int rc = SKV_OK;
    if (n_segments < 1)
        return SKV_OK;
    if (n > n_segments)
        n = (int)n_segments;
    for (t = 0; t < n; t++) {
        ranges[t].job = job;
        ranges[t].first = n_segments * t / n;
        ranges[t].last = n_segments * (t + 1) / n;
        ranges[t].scratch = NULL;
        if (need_scratch) {
            ranges[t].scratch = (int32_t *)malloc(sizeof(int32_t) * SEGC2_CELLS * SEGC2_CHANNELS);
            if (!ranges[t].scratch)
                rc = SKV_ERR_MEMORY;
        }
    }
    for (t = 1; t < n && rc == SKV_OK; t++, started++)
        if (pthread_create(&threads[t], NULL, segc_run_range, &ranges[t]) != 0)
            rc = SKV_ERR_THREAD;
    if (rc == SKV_OK)
        segc_run_range(&ranges[0]);
    for (t = 1; t <= started; t++)
        pthread_join(threads[t], NULL);
    for (t = 0; t < n; t++)
        free(ranges[t].scratch);
    return rc;
}

/* ---- encode --------------------------------------------------------------------------------------------- */

static uint8_t *segc_slot(const segc_job *job, int64_t seg)
{
    int64_t n_seg = segc_segment_count(job->n_cells, job->n_channels);
    return job->dst + segc_table_end(n_seg) + seg * (int64_t)SEGC_SEGMENT_BOUND;
}

static int64_t segc_encode_int(const segc_job *job, int64_t seg, int32_t *scratch)
{
    uint32_t cell0, ch0, h, w;
    (void)scratch;
    segc_segment_geometry(job->n_cells, job->n_channels, (uint32_t)seg, &cell0, &ch0, &h, &w);
    return segc_encode_block(job->q + (uint64_t)cell0 * job->n_channels + ch0, job->n_channels, h, w,
                             segc_slot(job, seg));
}

static int64_t segc_encode_float(const segc_job *job, int64_t seg, int32_t *scratch)
{
    uint32_t cell0, ch0, h, w;
    segc_segment_geometry(job->n_cells, job->n_channels, (uint32_t)seg, &cell0, &ch0, &h, &w);
    for (uint32_t r = 0; r < h; r++) {
        const float *row = job->fx + (uint64_t)(cell0 + r) * job->n_channels + ch0;
        for (uint32_t k = 0; k < w; k++)
            scratch[r * w + k] = segc_quantize_value(row[k], job->fscale[ch0 + k]);
    }
    return segc_encode_block(scratch, w, h, w, segc_slot(job, seg));
}

static int64_t segc_encode_job(segc_job *job, int n_threads, int need_scratch, int64_t dst_cap)
{
    int64_t n_seg = segc_segment_count(job->n_cells, job->n_channels), s, rc;
    if (n_seg < 0)
        return n_seg;
    if (dst_cap < segc_encode_bound(job->n_cells, job->n_channels))
        return SKV_ERR_CAPACITY;
    job->result = (int64_t *)malloc(sizeof(int64_t) * (size_t)n_seg);
    if (!job->result)
        return SKV_ERR_MEMORY;
    rc = segc_run(job, n_seg, n_threads, need_scratch);
    for (s = 0; s < n_seg && rc == SKV_OK; s++)
        if (job->result[s] < 0)
            rc = job->result[s]; /* the first failing segment: the same error whatever the thread count */
    if (rc == SKV_OK) {
        uint8_t *out = job->dst + segc_table_end(n_seg);
        segc_write_header(job->dst, job->n_cells, job->n_channels);
        for (s = 0; s < n_seg; s++) { /* compact the slots in order: each moves down, never over a later one */
            segc_store_le32(job->dst + SEGC_HEADER_SIZE + 4 * s, (uint32_t)job->result[s]);
            memmove(out, segc_slot(job, s), (size_t)job->result[s]);
            out += job->result[s];
        }
        rc = out - job->dst;
    }
    free(job->result);
    return rc;
}

int64_t segc_encode(const int32_t *q, uint32_t n_cells, uint32_t n_channels, uint8_t *dst, int64_t dst_cap,
                    int n_threads)
{
    segc_job job = {segc_encode_int, n_cells, n_channels, q, NULL, NULL, NULL, NULL, dst, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    if (!q || !dst)
        return SKV_ERR_ARGUMENT;
    return segc_encode_job(&job, n_threads, 0, dst_cap);
}

int64_t segc_encode_f32(const float *x, const float *inv_step, uint32_t n_cells, uint32_t n_channels,
                        uint8_t *dst, int64_t dst_cap, int n_threads)
{
    segc_job job = {segc_encode_float, n_cells, n_channels, NULL, x, inv_step, NULL, NULL, dst, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    if (!x || !inv_step || !dst)
        return SKV_ERR_ARGUMENT;
    return segc_encode_job(&job, n_threads, 1, dst_cap);
}

/* ---- decode --------------------------------------------------------------------------------------------- */

int segc_stream_info(const uint8_t *src, int64_t src_len, uint32_t *n_cells, uint32_t *n_channels)
{
    int rc = src ? segc_read_header(src, src_len, n_cells, n_channels) : SKV_ERR_ARGUMENT;
    return rc == SKV_OK ? src[4] : rc;
}

int64_t segc_segment_offsets(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                             uint64_t *offsets)
{
    return src && offsets ? segc_parse_offsets(src, src_len, n_cells, n_channels, offsets) : SKV_ERR_ARGUMENT;
}

static int64_t segc_decode_int(const segc_job *job, int64_t seg, int32_t *scratch)
{
    uint32_t cell0, ch0, h, w;
    (void)scratch;
    segc_segment_geometry(job->n_cells, job->n_channels, (uint32_t)seg, &cell0, &ch0, &h, &w);
    return segc_decode_block(job->src + job->offsets[seg], (uint32_t)(job->offsets[seg + 1] - job->offsets[seg]),
                             h, w, job->q_out + (uint64_t)cell0 * job->n_channels + ch0, job->n_channels);
}

static int64_t segc_decode_float(const segc_job *job, int64_t seg, int32_t *scratch)
{
    uint32_t cell0, ch0, h, w;
    segc_segment_geometry(job->n_cells, job->n_channels, (uint32_t)seg, &cell0, &ch0, &h, &w);
    int32_t rc = segc_decode_block(job->src + job->offsets[seg],
                                   (uint32_t)(job->offsets[seg + 1] - job->offsets[seg]), h, w, scratch, w);
    if (rc != SKV_OK)
        return rc;
    for (uint32_t r = 0; r < h; r++) {
        float *row = job->x_out + (uint64_t)(cell0 + r) * job->n_channels + ch0;
        for (uint32_t k = 0; k < w; k++)
            row[k] = segc_dequantize_value(scratch[r * w + k], job->fscale[ch0 + k]);
    }
    return SKV_OK;
}

static int64_t segc_decode_job(segc_job *job, int64_t src_len, int n_threads, int need_scratch)
{
    int64_t n_seg = segc_segment_count(job->n_cells, job->n_channels), s, total, rc;
    if (n_seg < 0)
        return n_seg;
    /* sized by the caller's shape, never by the stream */
    uint64_t *offsets = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)(n_seg + 1));
    job->result = (int64_t *)malloc(sizeof(int64_t) * (size_t)n_seg);
    total = offsets && job->result ? segc_segment_offsets(job->src, src_len, job->n_cells, job->n_channels, offsets)
                                   : SKV_ERR_MEMORY;
    rc = total;
    if (total >= 0) {
        job->offsets = offsets;
        rc = segc_run(job, n_seg, n_threads, need_scratch);
        for (s = 0; s < n_seg && rc == SKV_OK; s++)
            if (job->result[s] < 0)
                rc = job->result[s];
        if (rc == SKV_OK)
            rc = total;
    }
    free(offsets);
    free(job->result);
    return rc;
}

int64_t segc_decode(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels, int32_t *q,
                    int n_threads)
{
    segc_job job = {segc_decode_int, n_cells, n_channels, NULL, NULL, NULL, q, NULL, NULL, src, NULL, NULL, NULL, NULL, NULL, NULL};
    if (!src || !q)
        return SKV_ERR_ARGUMENT;
    return segc_decode_job(&job, src_len, n_threads, 0);
}

int64_t segc_decode_f32(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                        const float *step, float *x, int n_threads)
{
    segc_job job = {segc_decode_float, n_cells, n_channels, NULL, NULL, step, NULL, x, NULL, src, NULL, NULL, NULL, NULL, NULL, NULL};
    if (!src || !step || !x)
        return SKV_ERR_ARGUMENT;
    return segc_decode_job(&job, src_len, n_threads, 1);
}

/* ---- quantization ----------------------------------------------------------------------------------------- */

int segc_quantize(const float *x, const float *inv_step, uint32_t n_cells, uint32_t n_channels, int32_t *q)
{
    if (!x || !inv_step || !q)
        return SKV_ERR_ARGUMENT;
    for (uint64_t r = 0; r < n_cells; r++)
        for (uint32_t k = 0; k < n_channels; k++)
            q[r * n_channels + k] = segc_quantize_value(x[r * n_channels + k], inv_step[k]);
    return SKV_OK;
}

int segc_dequantize(const int32_t *q, const float *step, uint32_t n_cells, uint32_t n_channels, float *x)
{
    if (!q || !step || !x)
        return SKV_ERR_ARGUMENT;
    for (uint64_t r = 0; r < n_cells; r++)
        for (uint32_t k = 0; k < n_channels; k++)
            x[r * n_channels + k] = segc_dequantize_value(q[r * n_channels + k], step[k]);
    return SKV_OK;
}
