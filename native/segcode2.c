/*
 * segcode2.c -- the CPU driver of the segment coder's format 2 (segcode.h): per-channel models fitted once per
 * tensor, then every segment coded or decoded on the threads of segc_run (segcode.c).
 */
#define _POSIX_C_SOURCE 200809L
#if defined(__GNUC__) && !defined(__clang__)
/* lets GCC vectorise the quantizer's selects (no floating-point exception is observed; no result changes) */
#pragma GCC optimize("no-trapping-math")
#endif
/* the format-2 cost's logarithms from a table of segc2_log2_q16 (filled once, before any fit) */
static unsigned segc2_log2_table[1u << 12 | 1];
#define SEGC2_LOG2_Q16(f) segc2_log2_table[f]
#include "segcode_run.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static pthread_once_t segc2_log2_once = PTHREAD_ONCE_INIT;

static void segc2_log2_fill(void)
{
    for (uint32_t f = 1; f <= SEGC_TOTFREQ; f++)
        segc2_log2_table[f] = segc2_log2_q16(f);
}

int64_t segc2_segment_count(uint32_t n_cells, uint32_t n_channels)
{
    if (n_cells == 0 || n_channels == 0)
        return SKV_ERR_ARGUMENT;
    return (int64_t)segc2_segment_total(n_cells, n_channels);
}

/* where the encoder's slots start: past the largest header, table section and size table */
static int64_t segc2_slots_at(uint32_t n_channels, int64_t n_segments)
{
    return (int64_t)segc2_sizes_at(segc2_tables_max(n_channels)) + 4 * n_segments;
}

int64_t segc2_encode_bound(uint32_t n_cells, uint32_t n_channels)
{
    int64_t n_seg = segc2_segment_count(n_cells, n_channels);
    return n_seg < 0 ? n_seg : segc2_slots_at(n_channels, n_seg) + n_seg * (int64_t)SEGC2_SEGMENT_BOUND;
}

/* a segment's indices in the work buffer: column by column, at cell0 * n_channels + ch0 * h (the segments of a
 * tensor tile it) */
static int32_t *segc2_work(const segc_job *job, uint32_t cell0, uint32_t ch0, uint32_t h)
{
    return job->q_work + (uint64_t)cell0 * job->n_channels + (uint64_t)ch0 * h;
}

#define SEGC2_TILE 32 /* rows quantized and counted row by row, then stored column by column */

/* pass 1: a segment's indices (quantized from fx, or q) into the work buffer, column by column, counted; with
 * rec, the values the decoder gives back (index * rec_step) too */
static int64_t segc2_count_segment(const segc_job *job, int64_t seg, int32_t *scratch)
{
    uint32_t cell0, ch0, h, w, bad = 0;
    int32_t tile[SEGC2_TILE][SEGC2_CHANNELS];
    (void)scratch;
    segc2_segment_geometry(job->n_cells, job->n_channels, (uint32_t)seg, &cell0, &ch0, &h, &w);
    int32_t *work = job->q_work ? segc2_work(job, cell0, ch0, h) : NULL; /* none when only the models are wanted */
    Segc2Stats *stats = job->stats + (uint64_t)seg * SEGC2_CHANNELS;
    for (uint32_t k = 0; k < w; k++)
        segc2_stats_clear(&stats[k]);
    for (uint32_t r0 = 0; r0 < h; r0 += SEGC2_TILE) {
        uint32_t rows = h - r0 < SEGC2_TILE ? h - r0 : SEGC2_TILE;
        for (uint32_t t = 0; t < rows; t++) {
            uint64_t at = (uint64_t)(cell0 + r0 + t) * job->n_channels + ch0;
            int32_t *v = tile[t];
            if (job->fx) {
                const float *restrict x = job->fx + at, *restrict inv = job->fscale + ch0;
                for (uint32_t k = 0; k < w; k++)
                    v[k] = segc_quantize_value(x[k], inv[k]);
            }
            else
                for (uint32_t k = 0; k < w; k++)
                    v[k] = job->q[at + k];
            uint32_t bin[SEGC2_CHANNELS], escaped = 0;
            for (uint32_t k = 0; k < w; k++) { /* vectorised: magnitudes, range, escapes */
                uint32_t m = (uint32_t)(v[k] < 0 ? -(int64_t)v[k] : v[k]);
                bad |= m > SEGC_MAX_ABS;
                escaped |= m >= SEGC2_KMAX;
                bin[k] = m < SEGC2_KMAX ? m : SEGC2_KMAX;
            }
            for (uint32_t k = 0; k < w; k++)
                stats[k].hist[bin[k]]++;
            for (uint32_t k = 0; escaped && k < w; k++) {
                uint32_t m = (uint32_t)(v[k] < 0 ? -(int64_t)v[k] : v[k]);
                if (m >= SEGC2_KMAX && m <= SEGC_MAX_ABS)
                    stats[k].esc_bits += 5 + segc2_escape_length(m);
            }
            if (job->rec) {
                float *restrict rec = job->rec + at;
                const float *restrict step = job->rec_step + ch0;
                for (uint32_t k = 0; k < w; k++)
                    rec[k] = segc_dequantize_value(v[k], step[k]);
            }
        }
        for (uint32_t k = 0; work && k < w; k++)
            for (uint32_t t = 0; t < rows; t++)
                work[(uint64_t)k * h + r0 + t] = tile[t][k];
    }
    return bad ? SKV_ERR_UNSUPPORTED : SKV_OK;
}

/* pass 2, one channel: its statistics over the cell blocks in order, its model */
static int64_t segc2_fit_channel(const segc_job *job, int64_t c, int32_t *scratch)
{
    uint64_t n_chblocks = (job->n_channels + SEGC2_CHANNELS - 1) / SEGC2_CHANNELS;
    uint64_t n_cellblocks = (job->n_cells + (uint64_t)SEGC2_CELLS - 1) / SEGC2_CELLS;
    Segc2Stats total;
    (void)scratch;
    segc2_stats_clear(&total);
    for (uint64_t b = 0; b < n_cellblocks; b++)
        segc2_stats_add(&total, &job->stats[(b * n_chblocks + (uint64_t)c / SEGC2_CHANNELS) * SEGC2_CHANNELS +
                                            (uint64_t)c % SEGC2_CHANNELS]);
    segc2_choose(&total, job->n_cells, &job->params[c]);
    if (job->models)
        segc2_model(&job->params[c], &job->models[c], SEGC2_FOR_ENCODER);
    return SKV_OK;
}

static uint8_t *segc2_slot(const segc_job *job, int64_t seg)
{
    int64_t n_seg = segc2_segment_count(job->n_cells, job->n_channels);
    return job->dst + segc2_slots_at(job->n_channels, n_seg) + seg * (int64_t)SEGC2_SEGMENT_BOUND;
}

/* pass 3: code a segment */
static int64_t segc2_encode_segment(const segc_job *job, int64_t seg, int32_t *scratch)
{
    uint32_t cell0, ch0, h, w;
    (void)scratch;
    segc2_segment_geometry(job->n_cells, job->n_channels, (uint32_t)seg, &cell0, &ch0, &h, &w);
    return segc2_encode_block(segc2_work(job, cell0, ch0, h), 1, h, h, w, job->models + ch0, segc2_slot(job, seg));
}

/* the first failing item's error (the same whatever the thread count), or SKV_OK */
static int64_t segc_first_error(const int64_t *result, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (result[i] < 0)
            return result[i];
    return SKV_OK;
}

/* threads worth starting for a tensor: one below SEGC2_THREAD_MIN_VALUES values (starting one costs more) */
#define SEGC2_THREAD_MIN_VALUES (1 << 16)

static int segc2_threads(const segc_job *job, int n_threads)
{
    return (uint64_t)job->n_cells * job->n_channels < SEGC2_THREAD_MIN_VALUES ? 1 : n_threads;
}

/* the stream's head at dst: header, table bytes, table section (segc2_head_bound bytes at most); returns its size */
static int64_t segc2_write_head(uint8_t *dst, uint32_t n_cells, uint32_t n_channels, const Segc2Params *params)
{
    uint32_t table_bytes = segc2_write_tables(params, n_channels, dst + SEGC_HEADER_SIZE + 4);
    segc_write_header_version(dst, n_cells, n_channels, SEGC2_VERSION);
    segc_store_le32(dst + SEGC_HEADER_SIZE, table_bytes);
    return (int64_t)segc2_sizes_at(table_bytes);
}

int64_t segc2_head_bound(uint32_t n_channels)
{
    return n_channels ? (int64_t)segc2_sizes_at(segc2_tables_max(n_channels)) : SKV_ERR_ARGUMENT;
}

/* passes 1 and 2: every segment counted (its indices kept in the work buffer when with_work), every channel's
 * model fitted (with the encoder's tables when with_work); what it allocates, segc2_job_free frees */
static int64_t segc2_fit_job(segc_job *job, int64_t n_seg, int n_threads, int with_work)
{
    int64_t rc, n_items = n_seg > (int64_t)job->n_channels ? n_seg : (int64_t)job->n_channels;
    uint64_t n = (uint64_t)job->n_cells * job->n_channels;
    pthread_once(&segc2_log2_once, segc2_log2_fill);
    job->result = (int64_t *)malloc(sizeof(int64_t) * (size_t)n_items);
    job->stats = (Segc2Stats *)malloc(sizeof(Segc2Stats) * (size_t)n_seg * SEGC2_CHANNELS);
    job->params = (Segc2Params *)malloc(sizeof(Segc2Params) * job->n_channels);
    if (with_work) {
        job->models = (Segc2Model *)malloc(sizeof(Segc2Model) * job->n_channels);
        job->q_work = (int32_t *)malloc(sizeof(int32_t) * (size_t)n);
    }
    rc = job->result && job->stats && job->params && (!with_work || (job->models && job->q_work)) ? SKV_OK
                                                                                                 : SKV_ERR_MEMORY;
    if (rc == SKV_OK) {
        job->fn = segc2_count_segment;
        rc = segc_run(job, n_seg, n_threads, 0);
        rc = rc == SKV_OK ? segc_first_error(job->result, n_seg) : rc;
    }
    if (rc == SKV_OK) {
        job->fn = segc2_fit_channel;
        rc = segc_run(job, job->n_channels, n_threads, 0);
    }
    return rc;
}

static void segc2_job_free(segc_job *job)
{
    free(job->result);
    free(job->stats);
    free(job->params);
    free(job->models);
    free(job->q_work);
}

static int64_t segc2_encode_job(segc_job *job, int n_threads, int64_t dst_cap)
{
    int64_t n_seg = segc2_segment_count(job->n_cells, job->n_channels), rc, s;
    if (n_seg < 0)
        return n_seg;
    if (dst_cap < segc2_encode_bound(job->n_cells, job->n_channels))
        return SKV_ERR_CAPACITY;
    n_threads = segc2_threads(job, n_threads);
    rc = segc2_fit_job(job, n_seg, n_threads, 1);
    if (rc == SKV_OK) {
        job->fn = segc2_encode_segment;
        rc = segc_run(job, n_seg, n_threads, 0);
        rc = rc == SKV_OK ? segc_first_error(job->result, n_seg) : rc;
    }
    if (rc == SKV_OK) {
        uint8_t *sizes = job->dst + segc2_write_head(job->dst, job->n_cells, job->n_channels, job->params);
        uint8_t *out = sizes + 4 * n_seg;
        for (s = 0; s < n_seg; s++) { /* compact the slots in order: each moves down, never over a later one */
            segc_store_le32(sizes + 4 * s, (uint32_t)job->result[s]);
            memmove(out, segc2_slot(job, s), (size_t)job->result[s]);
            out += job->result[s];
        }
        rc = out - job->dst;
    }
    segc2_job_free(job);
    return rc;
}

int64_t segc2_fit_models(const int32_t *q, uint32_t n_cells, uint32_t n_channels, uint32_t *params, uint8_t *head,
                         int64_t head_cap, int n_threads)
{
    segc_job job = {.n_cells = n_cells, .n_channels = n_channels, .q = q};
    int64_t n_seg = segc2_segment_count(n_cells, n_channels), rc;
    if (n_seg < 0 || !q || !params || !head)
        return n_seg < 0 ? n_seg : SKV_ERR_ARGUMENT;
    if (head_cap < segc2_head_bound(n_channels))
        return SKV_ERR_CAPACITY;
    rc = segc2_fit_job(&job, n_seg, segc2_threads(&job, n_threads), 0);
    if (rc == SKV_OK) {
        for (uint32_t c = 0; c < n_channels; c++) {
            params[4 * c] = job.params[c].k;
            for (uint32_t i = 0; i < 3; i++)
                params[4 * c + 1 + i] = job.params[c].u[i];
        }
        rc = segc2_write_head(head, n_cells, n_channels, job.params);
    }
    segc2_job_free(&job);
    return rc;
}

int64_t segc2_encode(const int32_t *q, uint32_t n_cells, uint32_t n_channels, uint8_t *dst, int64_t dst_cap,
                     int n_threads)
{
    if (!q || !dst)
        return SKV_ERR_ARGUMENT;
    segc_job job = {.n_cells = n_cells, .n_channels = n_channels, .q = q, .dst = dst};
    return segc2_encode_job(&job, n_threads, dst_cap);
}

int64_t segc2_encode_f32(const float *x, const float *inv_step, uint32_t n_cells, uint32_t n_channels,
                         uint8_t *dst, int64_t dst_cap, int n_threads, const float *step, float *rec)
{
    if (!x || !inv_step || !dst || (rec && !step))
        return SKV_ERR_ARGUMENT;
    segc_job job = {.n_cells = n_cells, .n_channels = n_channels, .fx = x, .fscale = inv_step, .dst = dst,
                    .rec_step = step, .rec = rec};
    return segc2_encode_job(&job, n_threads, dst_cap);
}

/* ---- format 2: decode ----------------------------------------------------------------------------------- */

static int64_t segc2_decode_segment(const segc_job *job, int64_t seg, int32_t *scratch)
{
    uint32_t cell0, ch0, h, w;
    segc2_segment_geometry(job->n_cells, job->n_channels, (uint32_t)seg, &cell0, &ch0, &h, &w);
    const uint8_t *body = job->src + job->offsets[seg];
    uint32_t size = (uint32_t)(job->offsets[seg + 1] - job->offsets[seg]);
    int32_t rc = segc2_decode_block(body, size, h, w, job->models + ch0, scratch, 1, h); /* column by column */
    if (rc != SKV_OK)
        return rc;
    for (uint32_t r0 = 0; r0 < h; r0 += SEGC2_TILE) { /* back to rows, a tile at a time */
        int32_t tile[SEGC2_TILE][SEGC2_CHANNELS];
        uint32_t rows = h - r0 < SEGC2_TILE ? h - r0 : SEGC2_TILE;
        for (uint32_t k = 0; k < w; k++)
            for (uint32_t t = 0; t < rows; t++)
                tile[t][k] = scratch[k * h + r0 + t];
        for (uint32_t t = 0; t < rows; t++) {
            uint64_t at = (uint64_t)(cell0 + r0 + t) * job->n_channels + ch0;
            const int32_t *restrict v = tile[t];
            if (job->x_out) {
                float *restrict out = job->x_out + at;
                const float *restrict step = job->fscale + ch0;
                for (uint32_t k = 0; k < w; k++)
                    out[k] = segc_dequantize_value(v[k], step[k]);
            } else {
                int32_t *restrict out = job->q_out + at;
                for (uint32_t k = 0; k < w; k++)
                    out[k] = v[k];
            }
        }
    }
    return SKV_OK;
}

static int64_t segc2_decoder_model(const segc_job *job, int64_t c, int32_t *scratch)
{
    (void)scratch;
    segc2_model(&job->params[c], &job->models[c], SEGC2_FOR_DECODER);
    return SKV_OK;
}

static int64_t segc2_decode_job(segc_job *job, int64_t src_len, int n_threads)
{
    int64_t n_seg = segc2_segment_count(job->n_cells, job->n_channels), total, rc;
    if (n_seg < 0)
        return n_seg;
    /* sized by the caller's shape, never by the stream */
    uint64_t *offsets = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)(n_seg + 1));
    /* one result per segment, or per channel while the models are built */
    job->result = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n_seg > job->n_channels ? n_seg : job->n_channels));
    job->params = (Segc2Params *)malloc(sizeof(Segc2Params) * job->n_channels);
    job->models = (Segc2Model *)malloc(sizeof(Segc2Model) * job->n_channels);
    total = offsets && job->result && job->params && job->models
                ? segc2_parse(job->src, src_len, job->n_cells, job->n_channels, job->params, offsets)
                : SKV_ERR_MEMORY;
    rc = total;
    if (total >= 0) {
        n_threads = segc2_threads(job, n_threads);
        job->fn = segc2_decoder_model;
        rc = segc_run(job, job->n_channels, n_threads, 0);
        job->offsets = offsets;
        job->fn = segc2_decode_segment;
        rc = rc == SKV_OK ? segc_run(job, n_seg, n_threads, 1) : rc;
        rc = rc == SKV_OK ? segc_first_error(job->result, n_seg) : rc;
        if (rc == SKV_OK)
            rc = total;
    }
    free(offsets);
    free(job->result);
    free(job->params);
    free(job->models);
    return rc;
}

int64_t segc2_decode(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels, int32_t *q,
                     int n_threads)
{
    if (!src || !q)
        return SKV_ERR_ARGUMENT;
    segc_job job = {.n_cells = n_cells, .n_channels = n_channels, .src = src, .q_out = q};
    return segc2_decode_job(&job, src_len, n_threads);
}

int64_t segc2_decode_f32(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                         const float *step, float *x, int n_threads)
{
    if (!src || !step || !x)
        return SKV_ERR_ARGUMENT;
    segc_job job = {.n_cells = n_cells, .n_channels = n_channels, .src = src, .fscale = step, .x_out = x};
    return segc2_decode_job(&job, src_len, n_threads);
}

int64_t segc2_segment_offsets(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                              uint64_t *offsets)
{
    Segc2Params *params = (Segc2Params *)malloc(sizeof(Segc2Params) * (n_channels ? n_channels : 1));
    int64_t rc = !src || !offsets ? SKV_ERR_ARGUMENT
                 : params        ? segc2_parse(src, src_len, n_cells, n_channels, params, offsets)
                                 : SKV_ERR_MEMORY;
    free(params);
    return rc;
}

/* ---- format 2: size estimates ------------------------------------------------------------------------------ */

/* bits of a format-2 stream of n_rows x n_channels whose per-channel statistics over n_sampled rows are stats */
static double segc2_stream_bits(const Segc2Stats *stats, uint32_t n_channels, uint32_t n_sampled, uint32_t n_rows)
{
    double coded = 0.0, tables = 0.0, n_seg = (double)segc2_segment_total(n_rows, n_channels);
    for (uint32_t c = 0; c < n_channels; c++) {
        Segc2Params p;
        segc2_fit(&stats[c], &p);
        coded += (double)segc2_cost_q16(&stats[c], &p) / 65536.0;
        tables += segc2_param_bits(&p);
    }
    /* header, table size, tables (padded), and per segment its size and its lanes' states (a segment of
     * all-zero channels has none: not counted) */
    return 8.0 * (SEGC_HEADER_SIZE + 4) + tables + 4.0 + n_seg * 8.0 * (4 + 4 * SEGC2_LANES) +
           coded * ((double)n_rows / (double)n_sampled);
}

static double segc2_cost_rows(const float *x, uint32_t n_rows, uint32_t n_channels, const float *inv_step,
                              uint32_t row_every, uint32_t n_total_rows)
{
    Segc2Stats *stats = (Segc2Stats *)malloc(sizeof(Segc2Stats) * n_channels);
    uint32_t n_sampled = 0;
    pthread_once(&segc2_log2_once, segc2_log2_fill);
    if (!stats)
        return SKV_ERR_MEMORY;
    for (uint32_t c = 0; c < n_channels; c++)
        segc2_stats_clear(&stats[c]);
    for (uint32_t t = 0; t < n_rows; t += row_every, n_sampled++) {
        const float *row = x + (uint64_t)t * n_channels;
        for (uint32_t c = 0; c < n_channels; c++)
            segc2_count(&stats[c], segc_quantize_value(row[c], inv_step[c]));
    }
    double bits = segc2_stream_bits(stats, n_channels, n_sampled, n_total_rows);
    free(stats);
    return bits;
}

double segc2_cost(const float *x, uint32_t n_rows, uint32_t n_channels, const float *inv_step, uint32_t row_every)
{
    if (!x || !inv_step || n_rows == 0 || n_channels == 0)
        return 0.0;
    return segc2_cost_rows(x, n_rows, n_channels, inv_step, row_every ? row_every : 1, n_rows);
}

double segc2_cost_sample(const float *x, uint32_t n_sampled, uint32_t n_channels, const float *inv_step,
                         uint32_t n_rows)
{
    if (!x || !inv_step || n_rows == 0 || n_sampled == 0 || n_channels == 0)
        return 0.0;
    return segc2_cost_rows(x, n_sampled, n_channels, inv_step, 1, n_rows);
}
