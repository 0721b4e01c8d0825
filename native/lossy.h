/*
 * lossy.h -- entropy coding of quantized KV values for the lossy KV tier (kv_lossy codec).
 *
 * Symbols are signed quantization indices q[t * C + c] of a [T, C] token-major array. Each channel c
 * has its own adaptive frequency model over the zigzag index z = 2q (q >= 0) or -2q - 1 (q < 0):
 * LOSSY_ALPHABET - 1 direct symbols and one escape followed by 16 raw bits. Models start from a
 * geometric prior, count every coded symbol and are rebuilt (normalised to 2^LOSSY_SCALE) after
 * 1, 2, 4, ..., 256 symbols and then every 256, identically on both sides. Two interleaved rANS
 * states (rans.h) alternate symbol by symbol.
 * Declared to Python (@cffi): native/build_native.py reads its prototypes and constants.
 */
#ifndef SEQKV_LOSSY_H
#define SEQKV_LOSSY_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define LOSSY_ALPHABET 64
#define LOSSY_SCALE 15
#define LOSSY_ESCAPE_BITS 16
#define LOSSY_MAX_ABS 32000

size_t lossy_encode_bound(size_t n_values);
int64_t lossy_encode(const int32_t *q, uint32_t n_tokens, uint32_t n_channels, uint8_t *out, size_t cap);
int lossy_decode(const uint8_t *in, size_t n_in, uint32_t n_tokens, uint32_t n_channels, int32_t *q);
void lossy_quantize(const float *x, uint32_t n_tokens, uint32_t n_channels, const float *offset,
                    const float *inv_step, int32_t *q);
void lossy_dequantize(const int32_t *q, uint32_t n_tokens, uint32_t n_channels, const float *offset,
                      const float *step, float *x);

#endif /* SEQKV_LOSSY_H */
