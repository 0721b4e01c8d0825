/*
 * lossy3.h -- entropy coding of the lossy KV tier, format 3 (kv_lossy payload version 3).
 * Declared to Python (@cffi): native/build_native.py reads its prototypes and constants.
 */
#ifndef SEQKV_LOSSY3_H
#define SEQKV_LOSSY3_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/*
 * Format 3 (lossy3_*): indices of a [T, C] token-major float block, quantized here (round to nearest of
 * x * inv_step[c], clamped to +-LOSSY_MAX_ABS), coded channel by channel. Each channel has a static model
 * of the index: magnitudes 0 .. k - 1 (an escape symbol for larger ones when k == LOSSY3_KMAX, followed by
 * the sign, a 4-bit length and the raw bits), P(0) and P(1 | > 0) explicit, a geometric tail beyond, signs
 * equiprobable. The stream starts with the bit-packed models (per channel: 6 bits k - 1; if k >= 2 the
 * 8-bit logistic code of P(0); if k >= 3 those of P(1 | > 0) and of the tail ratio), padded to a byte,
 * then LOSSY3_STATES interleaved 32-bit rANS states (u32 each) and 16-bit words (little-endian). Symbol t
 * of a channel uses state t % LOSSY3_STATES; channels with k == 1 (all zeros) code nothing.
 * lossy3_cost tells the size such a stream would have (in bits) from the rows t % row_every == 0;
 * lossy3_cost_sample that of a stream of n_rows rows from the n_sampled of them given.
 * lossy3_reconstruct writes the values lossy3_decode would give back for x (closed-loop prediction);
 * lossy3_encode writes them too into rec (index * step[c]) unless rec is NULL.
 */
#define LOSSY3_SCALE 12
#define LOSSY3_KMAX 48
#define LOSSY3_STATES 4

size_t lossy3_encode_bound(uint32_t n_rows, uint32_t n_channels);
int64_t lossy3_encode(const float *x, uint32_t n_rows, uint32_t n_channels, const float *inv_step,
                     uint8_t *out, size_t cap, const float *step, float *rec);
int lossy3_decode(const uint8_t *in, size_t n_in, uint32_t n_rows, uint32_t n_channels, const float *step,
                  float *x);
double lossy3_cost(const float *x, uint32_t n_rows, uint32_t n_channels, const float *inv_step, uint32_t row_every);
double lossy3_cost_sample(const float *x, uint32_t n_sampled, uint32_t n_channels, const float *inv_step,
                          uint32_t n_rows);
void lossy3_reconstruct(const float *x, uint32_t n_rows, uint32_t n_channels, const float *inv_step,
                        const float *step, float *out);

#endif /* SEQKV_LOSSY3_H */
