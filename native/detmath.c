/* detmath.c -- see detmath.h. */
#include "detmath.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* det_matmul runs register tiles of ROWS x WIDTH outputs, shaped per instruction set so the accumulators use the
 * vector registers without spilling (AVX-512: 8 x 32 floats in 16 of its 32 registers, enough independent sums to
 * keep both adders busy; AVX2 and portable C: 4 x 32). The shape changes no bit: each output is its own sum in k
 * order, whatever tile or vector lane computes it. */

/* One ROWS x WIDTH block of out, sums in k order (constants: the accumulators stay in registers). */
#define DEFINE_TILE(NAME, ROWS, WIDTH)                                                                            \
    static inline __attribute__((always_inline)) void NAME(const float *x, uint32_t n_in, uint32_t x_stride,    \
                                                           const float *w, uint32_t n_out, float *out,          \
                                                           uint32_t out_stride, int accumulate)                 \
    {                                                                                                             \
        float acc[ROWS][WIDTH];                                                                                   \
        for (int r = 0; r < ROWS; r++)                                                                            \
            for (int j = 0; j < WIDTH; j++) acc[r][j] = accumulate ? out[(size_t)r * out_stride + j] : 0.0f;      \
        for (uint32_t k = 0; k < n_in; k++) {                                                                     \
            const float *wk = w + (size_t)k * n_out;                                                              \
            for (int r = 0; r < ROWS; r++) {                                                                      \
                float xv = x[(size_t)r * x_stride + k];                                                           \
                for (int j = 0; j < WIDTH; j++) {                                                                 \
                    float product = xv * wk[j];                                                                   \
                    acc[r][j] = acc[r][j] + product;                                                              \
                }                                                                                                 \
            }                                                                                                     \
        }                                                                                                         \
        for (int r = 0; r < ROWS; r++) memcpy(out + (size_t)r * out_stride, acc[r], sizeof acc[r]);               \
    }

/* Any smaller block (edges): the same sums in the same order. */
static void tile_edge(const float *x, uint32_t n_rows, uint32_t n_in, uint32_t x_stride, const float *w,
                      uint32_t n_out, uint32_t n_cols, float *out, uint32_t out_stride, int accumulate)
{
    for (uint32_t r = 0; r < n_rows; r++)
        for (uint32_t j = 0; j < n_cols; j++) {
            float acc = accumulate ? out[(size_t)r * out_stride + j] : 0.0f;
            for (uint32_t k = 0; k < n_in; k++) {
                float product = x[(size_t)r * x_stride + k] * w[(size_t)k * n_out + j];
                acc = acc + product;
            }
            out[(size_t)r * out_stride + j] = acc;
        }
}

typedef void (*MatmulFn)(const float *, uint32_t, uint32_t, uint32_t, const float *, uint32_t, float *, uint32_t,
                         int);

/* det_matmul with ROWS x WIDTH tiles, compiled with ATTR (a target). The last n_out % WIDTH columns run the same
 * tile over w's columns packed into a zero-padded WIDTH-wide panel; the padding's sums are dropped. */
#define DEFINE_MATMUL(NAME, ATTR, ROWS, WIDTH)                                                                    \
    DEFINE_TILE(NAME##_tile, ROWS, WIDTH)                                                                         \
    ATTR static void NAME(const float *x, uint32_t n_rows, uint32_t n_in, uint32_t x_stride, const float *w,     \
                          uint32_t n_out, float *out, uint32_t out_stride, int accumulate)                        \
    {                                                                                                             \
        uint32_t full = n_out - n_out % WIDTH, rest = n_out % WIDTH;                                              \
        float *panel = NULL;                                                                                      \
        if (rest && n_rows >= ROWS && (panel = calloc((size_t)n_in * WIDTH, sizeof(float))) != NULL)             \
            for (uint32_t k = 0; k < n_in; k++)                                                                   \
                memcpy(panel + (size_t)k * WIDTH, w + (size_t)k * n_out + full, rest * sizeof(float));            \
        for (uint32_t i = 0; i < n_rows; i += ROWS) {                                                             \
            uint32_t rows = n_rows - i < ROWS ? n_rows - i : ROWS;                                                \
            const float *xi = x + (size_t)i * x_stride;                                                           \
            float *oi = out + (size_t)i * out_stride;                                                             \
            if (rows < ROWS) {                                                                                    \
                tile_edge(xi, rows, n_in, x_stride, w, n_out, n_out, oi, out_stride, accumulate);                 \
                continue;                                                                                         \
            }                                                                                                     \
            for (uint32_t j = 0; j < full; j += WIDTH)                                                            \
                NAME##_tile(xi, n_in, x_stride, w + j, n_out, oi + j, out_stride, accumulate);                    \
            if (rest && panel) {                                                                                  \
                float block[ROWS * WIDTH] = {0}, *edge = oi + full;                                               \
                for (int r = 0; r < ROWS; r++)                                                                    \
                    if (accumulate) memcpy(block + r * WIDTH, edge + (size_t)r * out_stride, rest * sizeof(float)); \
                NAME##_tile(xi, n_in, x_stride, panel, WIDTH, block, WIDTH, 1);                                   \
                for (int r = 0; r < ROWS; r++)                                                                    \
                    memcpy(edge + (size_t)r * out_stride, block + r * WIDTH, rest * sizeof(float));               \
            } else if (rest) { /* no memory for the panel: the same sums, slower */                               \
                tile_edge(xi, rows, n_in, x_stride, w + full, n_out, rest, oi + full, out_stride, accumulate);    \
            }                                                                                                     \
        }                                                                                                         \
        free(panel);                                                                                              \
    }

DEFINE_MATMUL(matmul_generic, , 4, 32)
#if defined(__x86_64__) && defined(__GNUC__)
DEFINE_MATMUL(matmul_avx2, __attribute__((target("avx2"))), 4, 32)
DEFINE_MATMUL(matmul_avx512, __attribute__((target("avx512f"))), 8, 32)
#endif

/* The widest kernel this CPU runs; SEQKV_DETMATH_KERNEL=generic|avx2 picks a narrower one (tests compare them). */
static MatmulFn choose_matmul(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    const char *pick = getenv("SEQKV_DETMATH_KERNEL");
    int generic = pick && !strcmp(pick, "generic"), avx2_only = pick && !strcmp(pick, "avx2");
    if (!generic && !avx2_only && __builtin_cpu_supports("avx512f"))
        return matmul_avx512;
    if (!generic && __builtin_cpu_supports("avx2"))
        return matmul_avx2;
#endif
    return matmul_generic;
}

void det_matmul(const float *x, uint32_t n_rows, uint32_t n_in, uint32_t x_stride, const float *w, uint32_t n_out,
                float *out, uint32_t out_stride, int accumulate)
{
    static MatmulFn chosen; /* every thread chooses the same: a race only stores that value again */
    MatmulFn fn = __atomic_load_n(&chosen, __ATOMIC_RELAXED);
    if (!fn) {
        fn = choose_matmul();
        __atomic_store_n(&chosen, fn, __ATOMIC_RELAXED);
    }
    fn(x, n_rows, n_in, x_stride, w, n_out, out, out_stride, accumulate);
}

/* ln 2 and pi / 2 split so that k * HI is exact for the k used here (fdlibm's constants) */
static const double LN2_HI = 6.93147180369123816490e-01, LN2_LO = 1.90821492927058770002e-10;
static const double INV_LN2 = 1.44269504088896338700e+00;
static const double PIO2_HI = 1.57079632673412561417e+00, PIO2_LO = 6.07710050650619224932e-11;
static const double INV_PIO2 = 6.36619772367581382433e-01;

double det_log(double x)
{
    int e;
    double m = frexp(x, &e);  /* exact: x = m * 2^e, m in [0.5, 1) */
    if (m < 0.70710678118654752440) {
        m = m * 2.0;
        e = e - 1;
    }
    double f = (m - 1.0) / (m + 1.0), f2 = f * f, term = f, sum = 0.0;
    for (int n = 1; n <= 25; n += 2) {  /* log m = 2 atanh f, |f| < 0.172 */
        sum = sum + term / n;
        term = term * f2;
    }
    return (e * LN2_HI + (e * LN2_LO + 2.0 * sum));
}

double det_exp(double x)
{
    double k = floor(x * INV_LN2 + 0.5);
    double r = (x - k * LN2_HI) - k * LN2_LO;  /* |r| <= 0.35 */
    double sum = 1.0, term = 1.0;
    for (int n = 1; n <= 18; n++) {
        term = term * r / n;
        sum = sum + term;
    }
    return ldexp(sum, (int)k);
}

void det_sincos(double x, double *s, double *c)
{
    double k = floor(x * INV_PIO2 + 0.5);
    double r = (x - k * PIO2_HI) - k * PIO2_LO;  /* |r| <= pi / 4 (+ rounding) */
    double r2 = r * r, sin_r = 0.0, cos_r = 0.0, term_s = r, term_c = 1.0;
    for (int n = 0; n < 11; n++) {  /* Taylor series to r^21 / 21!, r^20 / 20! */
        sin_r = sin_r + term_s;
        cos_r = cos_r + term_c;
        term_s = -term_s * r2 / ((2 * n + 2) * (2 * n + 3));
        term_c = -term_c * r2 / ((2 * n + 1) * (2 * n + 2));
    }
    switch ((long long)k & 3) {
    case 0: *s = sin_r; *c = cos_r; break;
    case 1: *s = cos_r; *c = -sin_r; break;
    case 2: *s = -sin_r; *c = -cos_r; break;
    default: *s = -cos_r; *c = sin_r; break;
    }
}

void det_rope_angles(const int32_t *pos, uint32_t n_cells, uint32_t n_rot, double freq_base, double freq_scale,
                     float *cos_out, float *sin_out)
{
    uint32_t half = n_rot / 2;
    double log_base = det_log(freq_base);
    for (uint32_t i = 0; i < half; i++) {
        double inv_freq = det_exp(-2.0 * i / n_rot * log_base);
        for (uint32_t t = 0; t < n_cells; t++) {
            double s, c;
            det_sincos(((double)pos[t] * freq_scale) * inv_freq, &s, &c);
            cos_out[(size_t)t * half + i] = (float)c;
            sin_out[(size_t)t * half + i] = (float)s;
        }
    }
}
