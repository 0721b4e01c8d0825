/*
 * detmath.h -- the lossy decoder's float arithmetic, defined so that every CPU and compiler gives the same bits:
 * each product and each sum is one IEEE-754 operation rounded on its own (built with -ffp-contract=off, no fast
 * math), sums run in a fixed order, and the angles of RoPE come from basic operations only (no libm, whose
 * results differ between implementations and CPU-specific variants). SIMD width changes nothing: vector lanes
 * compute independent outputs.
 * Declared to Python (@cffi): native/build_native.py reads its prototypes and constants.
 */
#ifndef SEQKV_DETMATH_H
#define SEQKV_DETMATH_H

#include <stdint.h>

/*
 * out[i, j] = (accumulate ? out[i, j] : 0) + x[i, 0] * w[0, j] + x[i, 1] * w[1, j] + ... + x[i, n_in-1] * w[n_in-1, j],
 * summed left to right in float32. x: rows of x_stride floats (n_in used), w: [n_in, n_out] contiguous,
 * out: rows of out_stride floats (n_out used); out must not overlap x or w. Runs the widest kernel the CPU has
 * (x86-64: AVX-512, AVX2, else portable C; the environment variable SEQKV_DETMATH_KERNEL=generic|avx2 picks a
 * narrower one, read at the first call): all give the same bits.
 */
void det_matmul(const float *x, uint32_t n_rows, uint32_t n_in, uint32_t x_stride, const float *w, uint32_t n_out,
                float *out, uint32_t out_stride, int accumulate);

/*
 * RoPE angles: theta[t, i] = (pos[t] * freq_scale) * freq_base^(-2i / n_rot) for i < n_rot / 2, in float64;
 * cos_out / sin_out [n_cells, n_rot / 2] get cos and sin of theta rounded to float32. Accurate to a few
 * float64 ulps for |theta| < 1.6e6 (deterministic beyond that, less accurate).
 */
void det_rope_angles(const int32_t *pos, uint32_t n_cells, uint32_t n_rot, double freq_base, double freq_scale,
                     float *cos_out, float *sin_out);

/* The float64 functions behind det_rope_angles (exposed for tests): x > 0 for det_log. */
double det_log(double x);
double det_exp(double x);
void det_sincos(double x, double *s, double *c);

#endif /* SEQKV_DETMATH_H */
