/*
 * segcode_cuda.cu -- CUDA kernels of the segment coder (segcode.h) and a host API over them.
 *
 * The kernels run segcode_core.h, the same per-segment code as the CPU build, one thread per segment,
 * so both give the same bytes. Format 1 (segc_cuda_*) and format 2 (segc2_cuda_*: per-channel models counted
 * per segment, summed and fitted per channel on the device, the table section written on the host). Build (nothing outside this folder is needed):
 *   nvcc -O3 --fmad=false -Xcompiler -fPIC -shared -arch=sm_90 native/segcode_cuda.cu -o libsegcode_cuda.so
 * --fmad=false matters for segc_quantize_value (a multiply then a subtract must not fuse); the rest is
 * integer code. With -DSEGC_EMULATE it builds as plain C++ with no CUDA at all: each kernel then runs on
 * the host over an emulated grid, one thread after the other, through the same host API (segc_cuda_*),
 * which is how CI runs the kernels without a GPU.
 *
 * Host API: every function returns a byte count or SKV_OK, or a negative SKV_ERR_* code; ms, when not
 * NULL, receives three timings in milliseconds: host->device copies, kernels, device->host copies.
 */
#include "segcode_core.h"

#if !defined(__CUDACC_RTC__)
#include <stdlib.h>
#include <string.h>
#endif

#if defined(SEGC_EMULATE)
struct segc_dim3 {
    unsigned x;
};
static segc_dim3 blockIdx, threadIdx, blockDim, gridDim;
#define __global__
#endif

#define SEGC_ENCODE_BLOCK 64 /* threads per block of the per-segment kernels */
#define SEGC_PACK_BLOCK 256

extern "C" {

__global__ void segc_encode_kernel(const int32_t *q, uint32_t n_cells, uint32_t n_channels, uint32_t n_segments,
                                   uint8_t *slots, int32_t *sizes)
{
    uint32_t seg = blockIdx.x * blockDim.x + threadIdx.x, cell0, ch0, h, w;
    if (seg >= n_segments)
        return;
    segc_segment_geometry(n_cells, n_channels, seg, &cell0, &ch0, &h, &w);
    sizes[seg] = segc_encode_block(q + (uint64_t)cell0 * n_channels + ch0, n_channels, h, w,
                                   slots + (uint64_t)seg * SEGC_SEGMENT_BOUND);
}

/* one block per segment: its size-table entry (the table at sizes_at) and its body, from its slot (slot_bytes
 * each) to its place in the stream */
__global__ void segc_pack_kernel(const uint8_t *slots, uint64_t slot_bytes, const int32_t *sizes,
                                 const uint64_t *offsets, uint32_t n_segments, uint64_t sizes_at, uint8_t *dst)
{
    uint32_t seg = blockIdx.x;
    if (seg >= n_segments)
        return;
    const uint8_t *from = slots + (uint64_t)seg * slot_bytes;
    uint8_t *to = dst + offsets[seg];
    if (threadIdx.x == 0)
        segc_store_le32(dst + sizes_at + 4 * (uint64_t)seg, (uint32_t)sizes[seg]);
    for (uint32_t i = threadIdx.x; i < (uint32_t)sizes[seg]; i += blockDim.x)
        to[i] = from[i];
}

__global__ void segc_decode_kernel(const uint8_t *src, const uint64_t *offsets, uint32_t n_cells,
                                   uint32_t n_channels, uint32_t n_segments, int32_t *q, int32_t *status)
{
    uint32_t seg = blockIdx.x * blockDim.x + threadIdx.x, cell0, ch0, h, w;
    if (seg >= n_segments)
        return;
    segc_segment_geometry(n_cells, n_channels, seg, &cell0, &ch0, &h, &w);
    status[seg] = segc_decode_block(src + offsets[seg], (uint32_t)(offsets[seg + 1] - offsets[seg]), h, w,
                                    q + (uint64_t)cell0 * n_channels + ch0, n_channels);
}

/* format 2: one thread per segment counts its channels; one per channel sums them (cell blocks in order) and
 * fits its model; one per segment codes or decodes it with its channels' models */
__global__ void segc2_count_kernel(const int32_t *q, uint32_t n_cells, uint32_t n_channels, uint32_t n_segments,
                                   Segc2Stats *stats, int32_t *status)
{
    uint32_t seg = blockIdx.x * blockDim.x + threadIdx.x, cell0, ch0, h, w;
    if (seg >= n_segments)
        return;
    segc2_segment_geometry(n_cells, n_channels, seg, &cell0, &ch0, &h, &w);
    status[seg] = segc2_count_block(q + (uint64_t)cell0 * n_channels + ch0, n_channels, h, w,
                                    stats + (uint64_t)seg * SEGC2_CHANNELS);
}

__global__ void segc2_fit_kernel(const Segc2Stats *stats, uint32_t n_cells, uint32_t n_channels,
                                 Segc2Params *params, Segc2Model *models)
{
    uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n_channels)
        return;
    uint64_t n_chblocks = (n_channels + SEGC2_CHANNELS - 1) / SEGC2_CHANNELS;
    uint64_t n_cellblocks = (n_cells + (uint64_t)SEGC2_CELLS - 1) / SEGC2_CELLS;
    Segc2Stats total;
    segc2_stats_clear(&total);
    for (uint64_t b = 0; b < n_cellblocks; b++)
        segc2_stats_add(&total, &stats[(b * n_chblocks + c / SEGC2_CHANNELS) * SEGC2_CHANNELS + c % SEGC2_CHANNELS]);
    segc2_choose(&total, n_cells, &params[c]);
    segc2_model(&params[c], &models[c], SEGC2_FOR_ENCODER);
}

__global__ void segc2_encode_kernel(const int32_t *q, uint32_t n_cells, uint32_t n_channels, uint32_t n_segments,
                                    const Segc2Model *models, uint8_t *slots, int32_t *sizes)
{
    uint32_t seg = blockIdx.x * blockDim.x + threadIdx.x, cell0, ch0, h, w;
    if (seg >= n_segments)
        return;
    segc2_segment_geometry(n_cells, n_channels, seg, &cell0, &ch0, &h, &w);
    sizes[seg] = segc2_encode_block(q + (uint64_t)cell0 * n_channels + ch0, n_channels, 1, h, w, models + ch0,
                                    slots + (uint64_t)seg * SEGC2_SEGMENT_BOUND);
}

__global__ void segc2_decode_kernel(const uint8_t *src, const uint64_t *offsets, uint32_t n_cells,
                                    uint32_t n_channels, uint32_t n_segments, const Segc2Model *models, int32_t *q,
                                    int32_t *status)
{
    uint32_t seg = blockIdx.x * blockDim.x + threadIdx.x, cell0, ch0, h, w;
    if (seg >= n_segments)
        return;
    segc2_segment_geometry(n_cells, n_channels, seg, &cell0, &ch0, &h, &w);
    status[seg] = segc2_decode_block(src + offsets[seg], (uint32_t)(offsets[seg + 1] - offsets[seg]), h, w,
                                     models + ch0, q + (uint64_t)cell0 * n_channels + ch0, n_channels, 1);
}

__global__ void segc_quantize_kernel(const float *x, const float *inv_step, uint64_t n, uint32_t n_channels,
                                     int32_t *q)
{
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        q[i] = segc_quantize_value(x[i], inv_step[i % n_channels]);
}

__global__ void segc_dequantize_kernel(const int32_t *q, const float *step, uint64_t n, uint32_t n_channels,
                                       float *x)
{
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] = segc_dequantize_value(q[i], step[i % n_channels]);
}

} /* extern "C" */

#if !defined(__CUDACC_RTC__)

/* ---- device memory, copies, launches and timers: CUDA runtime, or the host when emulating ----------- */

#if defined(SEGC_EMULATE)
#define SEGC_LAUNCH(kernel, grid, block, ...)                                                                  \
    do {                                                                                                       \
        gridDim.x = (unsigned)(grid);                                                                          \
        blockDim.x = (unsigned)(block);                                                                        \
        for (blockIdx.x = 0; blockIdx.x < gridDim.x; blockIdx.x++)                                             \
            for (threadIdx.x = 0; threadIdx.x < blockDim.x; threadIdx.x++)                                     \
                kernel(__VA_ARGS__);                                                                           \
    } while (0)
static int segc_dev_alloc(void **p, uint64_t n)
{
    *p = malloc(n ? (size_t)n : 1);
    return *p ? 0 : -1;
}
static void segc_dev_free(void *p) { free(p); }
static int segc_to_dev(void *d, const void *h, uint64_t n) { memcpy(d, h, (size_t)n); return 0; }
static int segc_to_host(void *h, const void *d, uint64_t n) { memcpy(h, d, (size_t)n); return 0; }
static int segc_launched(void) { return 0; }
typedef int segc_timer;
static void segc_timer_mark(segc_timer *t) { (void)t; }
static void segc_timers_read(segc_timer *t, double *ms) { (void)t; if (ms) ms[0] = ms[1] = ms[2] = 0.0; }
#define SEGC_TIMER_INIT {0, 0, 0, 0}
#define SEGC_TIMERS_FREE(t) ((void)(t))
#else
#include <cuda_runtime.h>
#define SEGC_LAUNCH(kernel, grid, block, ...) kernel<<<(unsigned)(grid), (unsigned)(block)>>>(__VA_ARGS__)
static int segc_dev_alloc(void **p, uint64_t n) { return cudaMalloc(p, n ? (size_t)n : 1) == cudaSuccess ? 0 : -1; }
static void segc_dev_free(void *p) { if (p) cudaFree(p); }
static int segc_to_dev(void *d, const void *h, uint64_t n)
{
    return cudaMemcpy(d, h, (size_t)n, cudaMemcpyHostToDevice) == cudaSuccess ? 0 : -1;
}
static int segc_to_host(void *h, const void *d, uint64_t n)
{
    return cudaMemcpy(h, d, (size_t)n, cudaMemcpyDeviceToHost) == cudaSuccess ? 0 : -1;
}
static int segc_launched(void) { return cudaGetLastError() == cudaSuccess ? 0 : -1; }
typedef cudaEvent_t segc_timer;
static void segc_timer_mark(segc_timer *t)
{
    if (cudaEventCreate(t) == cudaSuccess)
        cudaEventRecord(*t, 0);
    else
        *t = 0;
}
/* four marks: start, copies in done, kernels done, copies out done */
static void segc_timers_read(segc_timer *t, double *ms)
{
    float span;
    cudaEventSynchronize(t[3]);
    for (int i = 0; i < 3 && ms; i++)
        ms[i] = t[i] && t[i + 1] && cudaEventElapsedTime(&span, t[i], t[i + 1]) == cudaSuccess ? span : -1.0;
}
#define SEGC_TIMER_INIT {0, 0, 0, 0}
#define SEGC_TIMERS_FREE(t) do { for (int i_ = 0; i_ < 4; i_++) if ((t)[i_]) cudaEventDestroy((t)[i_]); } while (0)
#endif

#define SEGC_GRID(n, block) (((uint64_t)(n) + (block) - 1) / (block))

extern "C" {

int64_t segc_cuda_encode_bound(uint32_t n_cells, uint32_t n_channels)
{
    uint64_t n_seg = segc_segment_total(n_cells, n_channels);
    return n_seg ? (int64_t)(SEGC_HEADER_SIZE + n_seg * (4 + (uint64_t)SEGC_SEGMENT_BOUND)) : SKV_ERR_ARGUMENT;
}

/* The indices to code on the device (d_q): q copied there, or x copied and quantized there with inv_step (d_x,
 * d_scale); marks timers 0 and 1 around the copies. */
static int64_t segc_cuda_indices_in(const int32_t *q, const float *x, const float *inv_step, uint64_t n,
                                    uint32_t n_channels, void *d_q, void *d_x, void *d_scale, segc_timer *t)
{
    segc_timer_mark(&t[0]);
    if (x ? segc_to_dev(d_x, x, 4 * n) || segc_to_dev(d_scale, inv_step, 4 * (uint64_t)n_channels)
          : segc_to_dev(d_q, q, 4 * n))
        return SKV_ERR_DEVICE;
    segc_timer_mark(&t[1]);
    if (x)
        SEGC_LAUNCH(segc_quantize_kernel, SEGC_GRID(n, 256), 256, (const float *)d_x, (const float *)d_scale, n,
                    n_channels, (int32_t *)d_q);
    return SKV_OK;
}

/* The coded segments (d_slots: a `bound`-byte slot each, d_sizes bytes of it used) packed on the device behind the
 * stream's head (head_bytes; offsets: every body's place, on the host) and copied after the head in dst; marks
 * timers 2 and 3. */
static int64_t segc_cuda_pack_out(const void *d_slots, uint64_t bound, const void *d_sizes, const uint64_t *offsets,
                                  uint64_t n_seg, uint64_t head_bytes, uint64_t total, uint8_t *dst, segc_timer *t)
{
    void *d_dst = 0, *d_offsets = 0;
    int64_t rc = SKV_OK;
    if (segc_dev_alloc(&d_dst, total) || segc_dev_alloc(&d_offsets, 8 * n_seg) ||
        segc_to_dev(d_offsets, offsets, 8 * n_seg))
        rc = SKV_ERR_DEVICE;
    if (rc == SKV_OK) {
        SEGC_LAUNCH(segc_pack_kernel, n_seg, SEGC_PACK_BLOCK, (const uint8_t *)d_slots, bound, (const int32_t *)d_sizes,
                    (const uint64_t *)d_offsets, (uint32_t)n_seg, head_bytes, (uint8_t *)d_dst);
        if (segc_launched())
            rc = SKV_ERR_DEVICE;
        segc_timer_mark(&t[2]);
    }
    if (rc == SKV_OK) {
        if (segc_to_host(dst + head_bytes, (uint8_t *)d_dst + head_bytes, total - head_bytes))
            rc = SKV_ERR_DEVICE;
        segc_timer_mark(&t[3]);
    }
    segc_dev_free(d_dst);
    segc_dev_free(d_offsets);
    return rc;
}

/* Codes q (host, int32 [n_cells, n_channels]) or, when x is not NULL, quantizes x (host, float32) with
 * inv_step first; the stream goes to dst (host, dst_cap bytes). */
static int64_t segc_cuda_encode_any(const int32_t *q, const float *x, const float *inv_step, uint32_t n_cells,
                                    uint32_t n_channels, uint8_t *dst, int64_t dst_cap, double *ms)
{
    uint64_t n_seg = segc_segment_total(n_cells, n_channels), n = (uint64_t)n_cells * n_channels, total, s;
    void *d_q = 0, *d_x = 0, *d_scale = 0, *d_slots = 0, *d_sizes = 0;
    int32_t *sizes = 0;
    uint64_t *offsets = 0;
    int64_t rc = SKV_OK;
    segc_timer t[4] = SEGC_TIMER_INIT;
    if (n_seg == 0 || (!q && !(x && inv_step)) || !dst)
        return SKV_ERR_ARGUMENT;
    sizes = (int32_t *)malloc(sizeof(int32_t) * n_seg);
    offsets = (uint64_t *)malloc(sizeof(uint64_t) * (n_seg + 1));
    if (!sizes || !offsets)
        rc = SKV_ERR_MEMORY;
    else if (segc_dev_alloc(&d_q, 4 * n) || segc_dev_alloc(&d_slots, n_seg * SEGC_SEGMENT_BOUND) ||
             segc_dev_alloc(&d_sizes, 4 * n_seg) ||
             (x && (segc_dev_alloc(&d_x, 4 * n) || segc_dev_alloc(&d_scale, 4 * (uint64_t)n_channels))))
        rc = SKV_ERR_DEVICE;
    if (rc == SKV_OK)
        rc = segc_cuda_indices_in(q, x, inv_step, n, n_channels, d_q, d_x, d_scale, t);
    if (rc == SKV_OK) {
        SEGC_LAUNCH(segc_encode_kernel, SEGC_GRID(n_seg, SEGC_ENCODE_BLOCK), SEGC_ENCODE_BLOCK,
                    (const int32_t *)d_q, n_cells, n_channels, (uint32_t)n_seg, (uint8_t *)d_slots,
                    (int32_t *)d_sizes);
        if (segc_launched() || segc_to_host(sizes, d_sizes, 4 * n_seg))
            rc = SKV_ERR_DEVICE;
    }
    total = SEGC_HEADER_SIZE + 4 * n_seg;
    for (s = 0; s < n_seg && rc == SKV_OK; s++) { /* lowest failing segment first, as on the CPU */
        if (sizes[s] < 0)
            rc = sizes[s];
        offsets[s] = total;
        total += (uint64_t)(sizes[s] < 0 ? 0 : sizes[s]);
    }
    if (rc == SKV_OK && total > (uint64_t)dst_cap)
        rc = SKV_ERR_CAPACITY;
    if (rc == SKV_OK)
        rc = segc_cuda_pack_out(d_slots, SEGC_SEGMENT_BOUND, d_sizes, offsets, n_seg, SEGC_HEADER_SIZE, total, dst, t);
    if (rc == SKV_OK) {
        segc_write_header(dst, n_cells, n_channels);
        segc_timers_read(t, ms);
    }
    SEGC_TIMERS_FREE(t);
    segc_dev_free(d_q);
    segc_dev_free(d_x);
    segc_dev_free(d_scale);
    segc_dev_free(d_slots);
    segc_dev_free(d_sizes);
    free(sizes);
    free(offsets);
    return rc == SKV_OK ? (int64_t)total : rc;
}

int64_t segc_cuda_encode(const int32_t *q, uint32_t n_cells, uint32_t n_channels, uint8_t *dst, int64_t dst_cap,
                         double *ms)
{
    return segc_cuda_encode_any(q, 0, 0, n_cells, n_channels, dst, dst_cap, ms);
}

int64_t segc_cuda_encode_f32(const float *x, const float *inv_step, uint32_t n_cells, uint32_t n_channels,
                             uint8_t *dst, int64_t dst_cap, double *ms)
{
    return x && inv_step ? segc_cuda_encode_any(0, x, inv_step, n_cells, n_channels, dst, dst_cap, ms)
                         : SKV_ERR_ARGUMENT;
}

/* Decodes the n_seg segments of src (host, total bytes, body offsets already checked on the host) into q (host,
 * int32) or, when step is not NULL, into x (host, float32) dequantized: format 1, or with models (host, format 2's
 * decoder tables of every channel) format 2. Returns SKV_OK or the lowest failing segment's code. */
static int64_t segc_cuda_decode_segments(const uint8_t *src, int64_t total, const uint64_t *offsets, uint64_t n_seg,
                                         uint32_t n_cells, uint32_t n_channels, const Segc2Model *models, int32_t *q,
                                         const float *step, float *x, double *ms)
{
    uint64_t n = (uint64_t)n_cells * n_channels, s;
    void *d_src = 0, *d_offsets = 0, *d_q = 0, *d_status = 0, *d_scale = 0, *d_x = 0, *d_models = 0;
    uint64_t models_bytes = models ? sizeof(Segc2Model) * n_channels : 0;
    int32_t *status = (int32_t *)malloc(sizeof(int32_t) * n_seg);
    int64_t rc = status ? SKV_OK : SKV_ERR_MEMORY;
    segc_timer t[4] = SEGC_TIMER_INIT;
    if (rc == SKV_OK &&
        (segc_dev_alloc(&d_src, (uint64_t)total) || segc_dev_alloc(&d_offsets, 8 * (n_seg + 1)) ||
         segc_dev_alloc(&d_q, 4 * n) || segc_dev_alloc(&d_status, 4 * n_seg) ||
         (models && segc_dev_alloc(&d_models, models_bytes)) ||
         (step && (segc_dev_alloc(&d_scale, 4 * (uint64_t)n_channels) || segc_dev_alloc(&d_x, 4 * n)))))
        rc = SKV_ERR_DEVICE;
    if (rc == SKV_OK) {
        segc_timer_mark(&t[0]);
        if (segc_to_dev(d_src, src, (uint64_t)total) || segc_to_dev(d_offsets, offsets, 8 * (n_seg + 1)) ||
            (models && segc_to_dev(d_models, models, models_bytes)) ||
            (step && segc_to_dev(d_scale, step, 4 * (uint64_t)n_channels)))
            rc = SKV_ERR_DEVICE;
        segc_timer_mark(&t[1]);
    }
    if (rc == SKV_OK) {
        if (models)
            SEGC_LAUNCH(segc2_decode_kernel, SEGC_GRID(n_seg, SEGC_ENCODE_BLOCK), SEGC_ENCODE_BLOCK,
                        (const uint8_t *)d_src, (const uint64_t *)d_offsets, n_cells, n_channels, (uint32_t)n_seg,
                        (const Segc2Model *)d_models, (int32_t *)d_q, (int32_t *)d_status);
        else
            SEGC_LAUNCH(segc_decode_kernel, SEGC_GRID(n_seg, SEGC_ENCODE_BLOCK), SEGC_ENCODE_BLOCK,
                        (const uint8_t *)d_src, (const uint64_t *)d_offsets, n_cells, n_channels, (uint32_t)n_seg,
                        (int32_t *)d_q, (int32_t *)d_status);
        if (step)
            SEGC_LAUNCH(segc_dequantize_kernel, SEGC_GRID(n, 256), 256, (const int32_t *)d_q,
                        (const float *)d_scale, n, n_channels, (float *)d_x);
        if (segc_launched())
            rc = SKV_ERR_DEVICE;
        segc_timer_mark(&t[2]);
    }
    if (rc == SKV_OK) {
        if (segc_to_host(status, d_status, 4 * n_seg) ||
            (step ? segc_to_host(x, d_x, 4 * n) : segc_to_host(q, d_q, 4 * n)))
            rc = SKV_ERR_DEVICE;
        segc_timer_mark(&t[3]);
        segc_timers_read(t, ms);
    }
    for (s = 0; s < n_seg && rc == SKV_OK; s++)
        if (status[s] != SKV_OK)
            rc = status[s];
    SEGC_TIMERS_FREE(t);
    segc_dev_free(d_src);
    segc_dev_free(d_offsets);
    segc_dev_free(d_q);
    segc_dev_free(d_status);
    segc_dev_free(d_scale);
    segc_dev_free(d_x);
    segc_dev_free(d_models);
    free(status);
    return rc;
}

/* Decodes src (host) into q (host, int32) or, when step is not NULL, into x (host, float32) dequantized. */
static int64_t segc_cuda_decode_any(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                                    int32_t *q, const float *step, float *x, double *ms)
{
    uint64_t n_seg = segc_segment_total(n_cells, n_channels);
    int64_t rc;
    if (n_seg == 0 || !src || (!q && !(step && x)))
        return SKV_ERR_ARGUMENT;
    /* sized by the caller's shape; the size table is checked on the host before any kernel runs */
    uint64_t *offsets = (uint64_t *)malloc(sizeof(uint64_t) * (n_seg + 1));
    int64_t total = rc = offsets ? segc_parse_offsets(src, src_len, n_cells, n_channels, offsets) : SKV_ERR_MEMORY;
    if (rc >= 0)
        rc = segc_cuda_decode_segments(src, total, offsets, n_seg, n_cells, n_channels, 0, q, step, x, ms);
    free(offsets);
    return rc == SKV_OK ? total : rc;
}

int64_t segc_cuda_decode(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels, int32_t *q,
                         double *ms)
{
    return segc_cuda_decode_any(src, src_len, n_cells, n_channels, q, 0, 0, ms);
}

int64_t segc_cuda_decode_f32(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                             const float *step, float *x, double *ms)
{
    return step && x ? segc_cuda_decode_any(src, src_len, n_cells, n_channels, 0, step, x, ms) : SKV_ERR_ARGUMENT;
}

/* Page-locked host memory of n bytes (malloc when emulating): llama.cpp copies an offloaded KV cache into it
 * with DMA instead of through a staging buffer, and the kernels' copies run at full PCIe speed. 0 or a code. */
int segc_cuda_host_alloc(uint64_t n, void **out)
{
#if defined(SEGC_EMULATE)
    *out = malloc(n ? (size_t)n : 1);
    return *out ? 0 : SKV_ERR_MEMORY;
#else
    return cudaHostAlloc(out, n ? (size_t)n : 1, cudaHostAllocDefault) == cudaSuccess ? 0 : SKV_ERR_MEMORY;
#endif
}

void segc_cuda_host_free(void *p)
{
#if defined(SEGC_EMULATE)
    free(p);
#else
    if (p)
        cudaFreeHost(p);
#endif
}

/* ---- format 2 ---------------------------------------------------------------------------------------- */

/* GPUs the CUDA runtime sees (0 when emulating), or SKV_ERR_DEVICE */
int segc_cuda_device_count(void)
{
#if defined(SEGC_EMULATE)
    return 0;
#else
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : SKV_ERR_DEVICE;
#endif
}

int64_t segc2_cuda_encode_bound(uint32_t n_cells, uint32_t n_channels)
{
    uint64_t n_seg = segc2_segment_total(n_cells, n_channels);
    return n_seg ? (int64_t)(segc2_sizes_at(segc2_tables_max(n_channels)) + n_seg * (4 + (uint64_t)SEGC2_SEGMENT_BOUND))
                 : SKV_ERR_ARGUMENT;
}

/* As segc_cuda_encode_any, format 2: count, fit, code, pack on the device; the header and the table section
 * (a few bytes per channel) are written on the host. */
static int64_t segc2_cuda_encode_any(const int32_t *q, const float *x, const float *inv_step, uint32_t n_cells,
                                     uint32_t n_channels, uint8_t *dst, int64_t dst_cap, double *ms)
{
    uint64_t n_seg = segc2_segment_total(n_cells, n_channels), n = (uint64_t)n_cells * n_channels, total = 0, s;
    void *d_q = 0, *d_x = 0, *d_scale = 0, *d_stats = 0, *d_params = 0, *d_models = 0, *d_slots = 0, *d_sizes = 0;
    int32_t *sizes = 0;
    uint64_t *offsets = 0, sizes_at = 0;
    Segc2Params *params = 0;
    int64_t rc = SKV_OK;
    segc_timer t[4] = SEGC_TIMER_INIT;
    if (n_seg == 0 || (!q && !(x && inv_step)) || !dst)
        return SKV_ERR_ARGUMENT;
    sizes = (int32_t *)malloc(sizeof(int32_t) * n_seg);
    offsets = (uint64_t *)malloc(sizeof(uint64_t) * (n_seg + 1));
    params = (Segc2Params *)malloc(sizeof(Segc2Params) * n_channels);
    if (!sizes || !offsets || !params)
        rc = SKV_ERR_MEMORY;
    else if (segc_dev_alloc(&d_q, 4 * n) || segc_dev_alloc(&d_stats, sizeof(Segc2Stats) * SEGC2_CHANNELS * n_seg) ||
             segc_dev_alloc(&d_params, sizeof(Segc2Params) * n_channels) ||
             segc_dev_alloc(&d_models, sizeof(Segc2Model) * n_channels) ||
             segc_dev_alloc(&d_slots, n_seg * SEGC2_SEGMENT_BOUND) || segc_dev_alloc(&d_sizes, 4 * n_seg) ||
             (x && (segc_dev_alloc(&d_x, 4 * n) || segc_dev_alloc(&d_scale, 4 * (uint64_t)n_channels))))
        rc = SKV_ERR_DEVICE;
    if (rc == SKV_OK)
        rc = segc_cuda_indices_in(q, x, inv_step, n, n_channels, d_q, d_x, d_scale, t);
    if (rc == SKV_OK) {
        SEGC_LAUNCH(segc2_count_kernel, SEGC_GRID(n_seg, SEGC_ENCODE_BLOCK), SEGC_ENCODE_BLOCK, (const int32_t *)d_q,
                    n_cells, n_channels, (uint32_t)n_seg, (Segc2Stats *)d_stats, (int32_t *)d_sizes);
        if (segc_launched() || segc_to_host(sizes, d_sizes, 4 * n_seg))
            rc = SKV_ERR_DEVICE;
        for (s = 0; s < n_seg && rc == SKV_OK; s++) /* lowest failing segment first, as on the CPU */
            if (sizes[s] < 0)
                rc = sizes[s];
    }
    if (rc == SKV_OK) {
        SEGC_LAUNCH(segc2_fit_kernel, SEGC_GRID(n_channels, SEGC_ENCODE_BLOCK), SEGC_ENCODE_BLOCK,
                    (const Segc2Stats *)d_stats, n_cells, n_channels, (Segc2Params *)d_params, (Segc2Model *)d_models);
        SEGC_LAUNCH(segc2_encode_kernel, SEGC_GRID(n_seg, SEGC_ENCODE_BLOCK), SEGC_ENCODE_BLOCK,
                    (const int32_t *)d_q, n_cells, n_channels, (uint32_t)n_seg, (const Segc2Model *)d_models,
                    (uint8_t *)d_slots, (int32_t *)d_sizes);
        if (segc_launched() || segc_to_host(sizes, d_sizes, 4 * n_seg) ||
            segc_to_host(params, d_params, sizeof(Segc2Params) * n_channels))
            rc = SKV_ERR_DEVICE;
    }
    if (rc == SKV_OK && (uint64_t)dst_cap < segc2_sizes_at(segc2_tables_max(n_channels)))
        rc = SKV_ERR_CAPACITY;
    if (rc == SKV_OK) {
        uint32_t table_bytes = segc2_write_tables(params, n_channels, dst + SEGC_HEADER_SIZE + 4);
        sizes_at = segc2_sizes_at(table_bytes);
        total = sizes_at + 4 * n_seg;
        for (s = 0; s < n_seg; s++) {
            offsets[s] = total;
            total += (uint64_t)sizes[s];
        }
        if (total > (uint64_t)dst_cap)
            rc = SKV_ERR_CAPACITY;
        segc_write_header_version(dst, n_cells, n_channels, SEGC2_VERSION);
        segc_store_le32(dst + SEGC_HEADER_SIZE, table_bytes);
    }
    if (rc == SKV_OK)
        rc = segc_cuda_pack_out(d_slots, SEGC2_SEGMENT_BOUND, d_sizes, offsets, n_seg, sizes_at, total, dst, t);
    if (rc == SKV_OK)
        segc_timers_read(t, ms);
    SEGC_TIMERS_FREE(t);
    segc_dev_free(d_q);
    segc_dev_free(d_x);
    segc_dev_free(d_scale);
    segc_dev_free(d_stats);
    segc_dev_free(d_params);
    segc_dev_free(d_models);
    segc_dev_free(d_slots);
    segc_dev_free(d_sizes);
    free(sizes);
    free(offsets);
    free(params);
    return rc == SKV_OK ? (int64_t)total : rc;
}

int64_t segc2_cuda_encode(const int32_t *q, uint32_t n_cells, uint32_t n_channels, uint8_t *dst, int64_t dst_cap,
                          double *ms)
{
    return segc2_cuda_encode_any(q, 0, 0, n_cells, n_channels, dst, dst_cap, ms);
}

int64_t segc2_cuda_encode_f32(const float *x, const float *inv_step, uint32_t n_cells, uint32_t n_channels,
                              uint8_t *dst, int64_t dst_cap, double *ms)
{
    return x && inv_step ? segc2_cuda_encode_any(0, x, inv_step, n_cells, n_channels, dst, dst_cap, ms)
                         : SKV_ERR_ARGUMENT;
}

/* As segc_cuda_decode_any, format 2: the table section and the size table are parsed, and the models built,
 * on the host (the CPU's code), then every segment is decoded on the device. */
static int64_t segc2_cuda_decode_any(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                                     int32_t *q, const float *step, float *x, double *ms)
{
    uint64_t n_seg = segc2_segment_total(n_cells, n_channels);
    int64_t rc = SKV_OK, total = 0;
    if (n_seg == 0 || !src || (!q && !(step && x)))
        return SKV_ERR_ARGUMENT;
    uint64_t *offsets = (uint64_t *)malloc(sizeof(uint64_t) * (n_seg + 1));
    Segc2Params *params = (Segc2Params *)malloc(sizeof(Segc2Params) * n_channels);
    Segc2Model *models = (Segc2Model *)malloc(sizeof(Segc2Model) * n_channels);
    if (!offsets || !params || !models)
        rc = SKV_ERR_MEMORY;
    else
        rc = total = segc2_parse(src, src_len, n_cells, n_channels, params, offsets);
    if (rc >= 0) {
        for (uint32_t c = 0; c < n_channels; c++)
            segc2_model(&params[c], &models[c], SEGC2_FOR_DECODER);
        rc = segc_cuda_decode_segments(src, total, offsets, n_seg, n_cells, n_channels, models, q, step, x, ms);
    }
    free(offsets);
    free(params);
    free(models);
    return rc == SKV_OK ? total : rc;
}

int64_t segc2_cuda_decode(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels, int32_t *q,
                          double *ms)
{
    return segc2_cuda_decode_any(src, src_len, n_cells, n_channels, q, 0, 0, ms);
}

int64_t segc2_cuda_decode_f32(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                              const float *step, float *x, double *ms)
{
    return step && x ? segc2_cuda_decode_any(src, src_len, n_cells, n_channels, 0, step, x, ms) : SKV_ERR_ARGUMENT;
}

} /* extern "C" */

#endif /* !__CUDACC_RTC__ */
