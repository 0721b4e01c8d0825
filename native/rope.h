/*
 * rope.h -- rotary position embedding of cached keys, in place: undone before lossy coding, redone after
 * decoding (seqkv_edge/state/rope.py computes the angles).
 * Declared to Python (@cffi): native/build_native.py reads its prototypes and constants.
 */
#ifndef SEQKV_ROPE_H
#define SEQKV_ROPE_H

#include <stdint.h>

/*
 * x: [n_cells, width] float32 keys, heads of head_dim channels; the first n_rot channels of each head are
 * rotated in pairs (neox: (i, i + n_rot / 2); otherwise (2i, 2i + 1)) by the angle whose cos and sin are
 * cos[t * n_rot / 2 + i], sin[...] (times sign: -1 undoes the rotation). Each value is rounded as numpy's
 * a * cos - b * sin, a * sin + b * cos would round it.
 */
void rope_rotate(float *x, uint32_t n_cells, uint32_t width, uint32_t head_dim, uint32_t n_rot, int neox,
                 const float *cos, const float *sin, float sign);

#endif /* SEQKV_ROPE_H */
