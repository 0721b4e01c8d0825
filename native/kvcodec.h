/*
 * kvcodec.h -- public C API of the kv_lossless codec (bit-exact KV tensor compression).
 *
 * A tensor is a byte array of n_tokens x row, either token-major (a row holds the n_channels
 * elements of one token; for q8_0 / q4_0 a row is a sequence of blocks) or channel-major
 * (llama.cpp's transposed V: a row holds the n_tokens elements of one channel; not for block
 * types). Supported ggml types: f32 (0), f16 (1), q4_0 (2), q8_0 (8), bf16 (30).
 *
 * The coded stream is self-delimiting (its header states its total size) and carries the
 * format version, the type, the layout and the shape, which the decoder checks against its
 * arguments. All functions are thread-safe and keep no global state.
 * Declared to Python (@cffi): native/build_native.py reads its prototypes and constants.
 */
#ifndef SEQKV_KVCODEC_H
#define SEQKV_KVCODEC_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define KVC_FORMAT_VERSION 1
#define KVC_HEADER_SIZE 32


/* Reusable per-thread state (context tables, scratch buffers). Optional: every call accepts
 * NULL and then builds what it needs; with a workspace, a thread coding many tensors builds
 * each context table once. A workspace must not be used by two threads at the same time. */
typedef struct kvc_workspace kvc_workspace;
kvc_workspace *kvc_workspace_new(void);
void kvc_workspace_free(kvc_workspace *ws);

/* Bytes of one tensor row (token-major) for n_channels elements; < 0 if unsupported. */
int64_t kvc_row_bytes(int ggml_type, int64_t n_channels);

/* An upper bound of the coded size of a tensor of src_len bytes. */
int64_t kvc_encode_bound(int ggml_type, int64_t n_channels, int64_t src_len);

/* Code src (src_len bytes) into dst; returns the coded size or a SKV_ERR_* code.
 * pair_offset: -1 to detect RoPE channel pairs, 0 for none, p > 0 to pair c with c + p. */
int64_t kvc_encode(const uint8_t *src, int64_t src_len, int ggml_type, int token_major,
                   int64_t n_channels, int pair_offset, uint8_t *dst, int64_t dst_cap, kvc_workspace *ws);

/* Decode a stream (src_len may exceed it) into dst (dst_len bytes, the tensor's size);
 * returns SKV_OK or a SKV_ERR_* code. */
int kvc_decode(const uint8_t *src, int64_t src_len, int ggml_type, int token_major,
               int64_t n_channels, uint8_t *dst, int64_t dst_len, kvc_workspace *ws);

/* What a stream's header says: type, layout and shape; SKV_OK or SKV_ERR_CORRUPT. */
int kvc_stream_info(const uint8_t *src, int64_t src_len, int *ggml_type, int *token_major,
                    int64_t *n_channels, int64_t *n_tokens);

/* The total size of the stream starting at src, from its header; or a SKV_ERR_* code. */
int64_t kvc_stream_size(const uint8_t *src, int64_t src_len);

#endif /* SEQKV_KVCODEC_H */
