/*
 * segcode.h -- the segment coder: int32 indices of an [n_cells, n_channels] tensor (row-major), coded in
 * independent segments of SEGC_CELLS cells x SEGC_CHANNELS channels (format constants, never a property
 * of the hardware), so any number of CPU threads or GPU threads code it in parallel, to the same bytes.
 *
 * Stream (little-endian):
 *   u32 magic SEGC_MAGIC ("SGC1"), u16 version SEGC_VERSION, u16 flags (0),
 *   u32 n_cells, u32 n_channels,
 *   u32 size[n_segments]      the byte count of each segment body (the size table),
 *   the segment bodies, in segment order (segcode_core.h describes one body).
 * Segment s covers cell block s / n_channel_blocks and channel block s % n_channel_blocks; edge
 * segments are smaller. n_segments = ceil(n_cells / SEGC_CELLS) * ceil(n_channels / SEGC_CHANNELS).
 *
 * Format 2 (segc2_*, segcode_core.h): segments of SEGC2_CELLS x SEGC2_CHANNELS coded with one static model
 * per channel, fitted to the whole tensor and stored once in a table section every segment reads:
 *   the header above with version 2, u32 table_bytes, the table section, u32 size[n_segments], the bodies.
 * segc_decode / segc_decode_f32 read format 1 only; segc2_decode / segc2_decode_f32 format 2 only;
 * segc_stream_info returns the version (1 or 2). segc2_cost tells the bits a format-2 stream of x quantized
 * with inv_step would take, from its rows t % row_every == 0; segc2_cost_sample that of a stream of n_rows
 * rows from n_sampled of them.
 *
 * Every function returns a negative SKV_ERR_* code on failure. Decoders read nothing outside
 * [src, src + src_len) and allocate only what the caller's n_cells x n_channels implies; a stream
 * describing another shape is SKV_ERR_MISMATCH. n_threads <= 0 means one; the bytes never depend on it.
 * Declared to Python (@cffi): native/build_native.py reads its prototypes and constants.
 */
#ifndef SEQKV_SEGCODE_H
#define SEQKV_SEGCODE_H

#include <stddef.h>
#include <stdint.h>

#include "segcode_core.h"

#define SEGC_MAX_THREADS 64

int64_t segc_segment_count(uint32_t n_cells, uint32_t n_channels);
/* capacity segc_encode needs at dst (it uses dst as scratch; the result is compacted in place) */
int64_t segc_encode_bound(uint32_t n_cells, uint32_t n_channels);
/* returns the stream's byte count */
int64_t segc_encode(const int32_t *q, uint32_t n_cells, uint32_t n_channels, uint8_t *dst, int64_t dst_cap,
                    int n_threads);
/* quantizes x (x * inv_step[channel], rounded) segment by segment as it codes */
int64_t segc_encode_f32(const float *x, const float *inv_step, uint32_t n_cells, uint32_t n_channels,
                        uint8_t *dst, int64_t dst_cap, int n_threads);
/* returns the byte count the stream took (streams are self-delimiting) */
int64_t segc_decode(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels, int32_t *q,
                    int n_threads);
/* decodes and dequantizes: x = index * step[channel] */
int64_t segc_decode_f32(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                        const float *step, float *x, int n_threads);
/* the stream's format version (1 or 2) */
int segc_stream_info(const uint8_t *src, int64_t src_len, uint32_t *n_cells, uint32_t *n_channels);
/* byte offsets of each segment body from src (n_segments + 1 entries: the last is the stream's size) */
int64_t segc_segment_offsets(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                             uint64_t *offsets);
int64_t segc2_segment_count(uint32_t n_cells, uint32_t n_channels);
int64_t segc2_encode_bound(uint32_t n_cells, uint32_t n_channels);
int64_t segc2_encode(const int32_t *q, uint32_t n_cells, uint32_t n_channels, uint8_t *dst, int64_t dst_cap,
                     int n_threads);
/* the head of segc2_encode's stream of q (header, table bytes, table section: what precedes the size table) at
 * head, at most segc2_head_bound bytes; params receives each channel's fitted model, k, u[0], u[1], u[2] (4 x
 * n_channels). So another coder of the segments (a GPU's) fits the models as this one does. Returns the head's size */
int64_t segc2_head_bound(uint32_t n_channels);
int64_t segc2_fit_models(const int32_t *q, uint32_t n_cells, uint32_t n_channels, uint32_t *params, uint8_t *head,
                         int64_t head_cap, int n_threads);
/* each channel's coding table as the WGSL shaders read it (SEGC2_SHADER_WORDS u32 a channel: n_sym, the escape's
 * symbol, the cumulative frequencies), from fitted models (params as segc2_fit_models gives them) or from the
 * models of a format-2 stream (checked as a decoder checks it) */
#define SEGC2_SHADER_WORDS 130
int64_t segc2_model_tables(const uint32_t *params, uint32_t n_channels, uint32_t *tables);
int64_t segc2_stream_tables(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                            uint32_t *tables);
/* rec, when not NULL, receives index * step[channel]: what the decoder gives back (a closed loop's prediction) */
int64_t segc2_encode_f32(const float *x, const float *inv_step, uint32_t n_cells, uint32_t n_channels,
                         uint8_t *dst, int64_t dst_cap, int n_threads, const float *step, float *rec);
int64_t segc2_decode(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels, int32_t *q,
                     int n_threads);
int64_t segc2_decode_f32(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                         const float *step, float *x, int n_threads);
int64_t segc2_segment_offsets(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                              uint64_t *offsets);
double segc2_cost(const float *x, uint32_t n_rows, uint32_t n_channels, const float *inv_step, uint32_t row_every);
double segc2_cost_sample(const float *x, uint32_t n_sampled, uint32_t n_channels, const float *inv_step,
                         uint32_t n_rows);
int segc_quantize(const float *x, const float *inv_step, uint32_t n_cells, uint32_t n_channels, int32_t *q);
int segc_dequantize(const int32_t *q, const float *step, uint32_t n_cells, uint32_t n_channels, float *x);

#endif /* SEQKV_SEGCODE_H */
