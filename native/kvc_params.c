/*
 * kvc_params.c -- encoder-side choice of the side information of the kv_lossless codec.
 *
 * Nothing here has to be reproducible: the choices (pairing, EMA weight, rotation, mu, sigma)
 * are quantized and stored in the stream, and the decoder only uses the stored values. So this
 * file may use floating point and libm freely.
 */
#include <math.h>
#include <stdlib.h>

#include "kvc_lanes.h"
#include "kvc_map.h"

#define N_ALPHA 5
static const int ALPHAS_Q8[N_ALPHA] = {0, 16, 32, 64, 128};
#define WINDOW 512        /* tokens used to choose alpha and the rotation */
#define DETECT_WINDOW 128 /* tokens used to choose the pair offset */
static const int PAIR_CANDIDATES[] = {1, 16, 32, 64, 128};
/* A group of KVC_GROUP float channels whose moving predictors save less than this (bits per value,
 * estimated) over constant ones gets constant ones: its contexts are then fixed and the decoder
 * runs its static loop, about twice as fast (kvc_quad.c). On the default model's f16 KV (2,000
 * tokens; every V group and about half the K groups go static), one thread, by threshold:
 *   threshold               none    0       0.5     0.75    1.0
 *   ratio                   1.2567  1.2611  1.2487  1.2452  1.2409
 *   decode MB/s, same data  ~210    ~210    ~325    ~345    ~360
 *   decode MB/s, cold data  -       -       ~300    -       ~345   (benchmarks/codec_throughput.py)
 * ("same data": one tensor decoded again and again; "cold": all tensors in turn.) */
#define STATIC_GAIN 1.0
#define STATIC_MIN_TOKENS 128 /* shorter sections: the estimates are too noisy to trade ratio on them */

static double static_gain(const KvcSection *s)
{
    return s->fmt->kind == KVC_KIND_FLOAT && s->n_tokens >= STATIC_MIN_TOKENS ? STATIC_GAIN : -INFINITY;
}

uint32_t kvc_fix_to_word(const KvcFormat *f, int64_t fix)
{
    uint64_t mag = fix < 0 ? (uint64_t)(-fix) : (uint64_t)fix;
    uint32_t sign = fix < 0 ? 1u << (f->mant_bits + f->exp_bits) : 0;
    uint32_t m_mask = (1u << f->mant_bits) - 1;
    int e_max = (1 << f->exp_bits) - 1;
    if (mag == 0)
        return sign;
    int msb = kvc_msb64(mag);
    int e = msb - f->mant_bits + 1 + f->e0;
    if (e >= e_max)
        return sign | ((uint32_t)(e_max - 1) << f->mant_bits) | m_mask;
    if (e >= 1) {
        uint64_t m = msb >= f->mant_bits ? mag >> (msb - f->mant_bits) : mag << (f->mant_bits - msb);
        return sign | ((uint32_t)e << f->mant_bits) | (uint32_t)(m & m_mask);
    }
    return sign | (uint32_t)((mag << f->e0) & m_mask);
}

int kvc_make_lanes(KvcLane *lanes, int n_channels, int pair_offset)
{
    int n = 0;
    for (int c = 0; c < n_channels; c++) {
        if (pair_offset > 0 && (c / pair_offset) % 2)
            continue;
        KvcLane ln = {{c, pair_offset > 0 ? c + pair_offset : -1}, 0, 1 << 14, 0};
        lanes[n++] = ln;
    }
    return n;
}

/* Every element of the section as a float (fixed-point units), channel after channel, into
 * vals (kvc_estimate_floats(s) of them). */
static void load_values(const KvcSection *s, float *vals)
{
    const KvcFormat *f = s->fmt;
    int64_t n = s->n_tokens;
    float base[KVC_MAX_A], scale[KVC_MAX_A];
    int A = 1 << f->nb, raw_mask = (1 << f->raw_bits) - 1;
    for (int h = 0; h < A; h++) {
        if (f->kind == KVC_KIND_FLOAT) {
            int64_t lo = kvc_float_to_fix(f, (uint32_t)h << f->raw_bits);
            int64_t next = kvc_float_to_fix(f, ((uint32_t)h << f->raw_bits) + 1);
            base[h] = (float)lo;
            scale[h] = (float)(next - lo); /* one raw step, signed with the bin */
        } else {
            base[h] = (float)((h & (A >> 1) ? h - A : h) * 65536);
            scale[h] = 0.0f;
        }
    }
    for (int c = 0; c < s->n_channels; c++) {
        const KvcChannel *ch = &s->chans[c];
        const uint8_t *p = ch->base + (f->elem == KVC_ELEM_W32 ? 2 : 0);
        float *out = vals + c * n;
        if (f->kind == KVC_KIND_FLOAT) { /* 16-bit words */
            for (int64_t t = 0; t < n; t++, p += ch->stride) {
                int word = p[0] | (p[1] << 8), h = word >> f->raw_bits;
                out[t] = base[h] + scale[h] * (float)(word & raw_mask);
            }
            continue;
        }
        for (int64_t t = 0; t < n; t++, p += ch->stride) {
            int h = f->elem == KVC_ELEM_I8 ? p[0] : ((p[0] >> ch->nib_shift) & 15) ^ 8;
            h = p[ch->scale_off] >> 7 ? (-h) & (A - 1) : h; /* times the sign of the scale */
            out[t] = base[h]; /* INT: no raw bits */
        }
    }
}

int kvc_max_exponent(const KvcSection *s)
{
    const KvcFormat *f = s->fmt;
    int e_max = (1 << f->exp_bits) - 1, best = 0;
    for (int c = 0; c < s->n_channels; c++) {
        for (int64_t t = 0; t < s->n_tokens; t++) {
            const uint8_t *p = s->chans[c].base + t * s->chans[c].stride + (f->elem == KVC_ELEM_W32 ? 2 : 0);
            int e = (int)((((uint32_t)p[0] | ((uint32_t)p[1] << 8)) >> f->mant_bits) & (uint32_t)e_max);
            if (e < e_max && e > best)
                best = e;
        }
    }
    return best;
}

/* Up to BATCH series (or lanes) handled in one pass: their sums do not depend on one another,
 * so the pass runs at the throughput of the floating-point units rather than at the latency
 * of one sum. Each sum keeps the order of the one-series code, so the results are the same. */
#define BATCH 4

/* mean_of() of k <= BATCH series */
static void means_of(const float *const *x, int k, int64_t n, double *mean)
{
    const float *p[BATCH];
    double s[BATCH] = {0};
    for (int i = 0; i < BATCH; i++)
        p[i] = x[i < k ? i : 0];
    for (int64_t t = 0; t < n; t++)
        for (int i = 0; i < BATCH; i++)
            s[i] += p[i][t];
    for (int i = 0; i < k; i++)
        mean[i] = n ? s[i] / (double)n : 0.0;
}

/* rotation_angle of a pair: atan2 of the lag-1 autocorrelation of (x + iy), about its mean */
static void rotation_angles(const float *const *x, const float *const *y, int k, int64_t n, const double *mx,
                            const double *my, double *angle)
{
    const float *px[BATCH], *py[BATCH];
    double cx[BATCH], cy[BATCH], re[BATCH] = {0}, im[BATCH] = {0};
    for (int i = 0; i < BATCH; i++) {
        int j = i < k ? i : 0;
        px[i] = x[j];
        py[i] = y[j];
        cx[i] = mx[j];
        cy[i] = my[j];
    }
    for (int64_t t = 1; t < n; t++)
        for (int i = 0; i < BATCH; i++) {
            double ax = px[i][t] - cx[i], ay = py[i][t] - cy[i], bx = px[i][t - 1] - cx[i],
                   by = py[i][t - 1] - cy[i];
            re[i] += ax * bx + ay * by;
            im[i] += ay * bx - ax * by;
        }
    for (int i = 0; i < k; i++)
        angle[i] = atan2(im[i], re[i]);
}

static double log_cost(double sq, int64_t n)
{
    return 0.5 * log2(sq / (double)(n ? n : 1) + 1.0);
}

/* Squared residuals of the N_ALPHA predictors (one per alpha) of k <= BATCH lanes over n tokens,
 * all in one pass (the 8-wide inner loops vectorize); y == NULL: single channels. */
static void run_alphas(const float *const *x, const float *const *y, int k, int64_t n, const double *mx,
                       const double *my, const float *cs, const float *sn, double (*ex)[N_ALPHA],
                       double (*ey)[N_ALPHA])
{
    const float *xs[BATCH], *ys[BATCH];
    float a[8], c[BATCH], s[BATCH], px[BATCH][8], py[BATCH][8], sx[BATCH][8], sy[BATCH][8];
    for (int j = 0; j < 8; j++)
        a[j] = j < N_ALPHA ? (float)ALPHAS_Q8[j] / 256.0f : 0.0f;
    for (int i = 0; i < BATCH; i++) {
        int l = i < k ? i : 0;
        xs[i] = x[l];
        ys[i] = y ? y[l] : x[l];
        c[i] = cs[l];
        s[i] = sn[l];
        for (int j = 0; j < 8; j++) {
            px[i][j] = (float)mx[l];
            py[i][j] = y ? (float)my[l] : 0.0f;
            sx[i][j] = sy[i][j] = 0.0f;
        }
    }
    for (int64_t t = 0; t < n; t++)
        for (int i = 0; i < BATCH; i++) {
            float xt = xs[i][t], yt = y ? ys[i][t] : 0.0f;
            for (int j = 0; j < 8; j++) {
                float dx = xt - px[i][j], dy = yt - py[i][j];
                sx[i][j] += dx * dx;
                sy[i][j] += dy * dy;
                float ux = px[i][j] + a[j] * dx, uy = py[i][j] + a[j] * dy;
                px[i][j] = c[i] * ux - s[i] * uy;
                py[i][j] = s[i] * ux + c[i] * uy;
            }
        }
    for (int i = 0; i < k; i++)
        for (int j = 0; j < N_ALPHA; j++) {
            ex[i][j] = sx[i][j];
            ey[i][j] = sy[i][j];
        }
}

/* sum of (x - mean)^2 of k <= BATCH series: the residual energy of a constant predictor */
static void static_energy(const float *const *x, int k, int64_t n, const double *mean, double *e)
{
    const float *p[BATCH];
    double s[BATCH] = {0}, m[BATCH];
    for (int i = 0; i < BATCH; i++) {
        p[i] = x[i < k ? i : 0];
        m[i] = mean[i < k ? i : 0];
    }
    for (int64_t t = 0; t < n; t++)
        for (int i = 0; i < BATCH; i++) {
            double d = p[i][t] - m[i];
            s[i] += d * d;
        }
    for (int i = 0; i < k; i++)
        e[i] = s[i];
}

/* Lanes with the chosen predictors (cost: bits per token of each lane): the groups of KVC_GROUP
 * channels among them that save less than min_gain bits per value get constant predictors. */
static void prefer_static(KvcLane *ln, const float *const *x, const float *const *y, int k, int64_t n,
                          const double *mx, const double *my, double *cost, double min_gain)
{
    double sx[BATCH], sy[BATCH] = {0};
    static_energy(x, k, n, mx, sx);
    if (y)
        static_energy(y, k, n, my, sy);
    int per_group = y ? KVC_GROUP / 2 : KVC_GROUP;
    for (int g0 = 0; g0 < k; g0 += per_group) {
        int g1 = g0 + per_group < k ? g0 + per_group : k;
        double gain = 0.0, still[BATCH];
        for (int i = g0; i < g1; i++) {
            still[i] = log_cost(sx[i], n) + (y ? log_cost(sy[i], n) : 0.0);
            gain += still[i] - cost[i];
        }
        if (gain >= min_gain * (double)(g1 - g0) * (y ? 2 : 1))
            continue;
        for (int i = g0; i < g1; i++) {
            ln[i].alpha_q8 = 0;
            ln[i].cos_q14 = 1 << 14;
            ln[i].sin_q14 = 0;
            cost[i] = still[i];
        }
    }
}

/* Choose alpha (and the rotation of a pair) of k <= BATCH lanes on the first n tokens; cost[i]:
 * the cost of lane i. x, y: the lanes' first and second channels (y == NULL: single channels);
 * min_gain: see prefer_static (-INFINITY: off). */
static void choose_lanes(KvcLane *ln, const float *const *x, const float *const *y, int k, int64_t n,
                         int try_zero_angle, double min_gain, double *cost)
{
    double mx[BATCH], my[BATCH] = {0}, angles[2][BATCH] = {{0}};
    means_of(x, k, n, mx);
    if (y) {
        means_of(y, k, n, my);
        rotation_angles(x, y, k, n, mx, my, angles[0]);
    }
    for (int i = 0; i < k; i++)
        cost[i] = INFINITY;
    for (int ai = 0; ai < (y && try_zero_angle ? 2 : 1); ai++) {
        int32_t cs[BATCH], sn[BATCH];
        float csf[BATCH], snf[BATCH];
        double ex[BATCH][N_ALPHA], ey[BATCH][N_ALPHA];
        for (int i = 0; i < k; i++) {
            cs[i] = (int32_t)lround(cos(angles[ai][i]) * 16384.0);
            sn[i] = (int32_t)lround(sin(angles[ai][i]) * 16384.0);
            csf[i] = (float)cs[i] / 16384.0f;
            snf[i] = y ? (float)sn[i] / 16384.0f : 0.0f;
        }
        run_alphas(x, y, k, n, mx, my, csf, snf, ex, ey);
        for (int i = 0; i < k; i++)
            for (int j = 0; j < N_ALPHA; j++) {
                double c = log_cost(ex[i][j], n) + (y ? log_cost(ey[i][j], n) : 0.0);
                if (c < cost[i] - 1e-9) {
                    cost[i] = c;
                    ln[i].alpha_q8 = ALPHAS_Q8[j];
                    ln[i].cos_q14 = y ? cs[i] : 1 << 14;
                    ln[i].sin_q14 = y ? sn[i] : 0;
                }
            }
    }
    if (min_gain > -INFINITY)
        prefer_static(ln, x, y, k, n, mx, my, cost, min_gain);
}

static void quantize_sigma(KvcChannel *ch, double sigma)
{
    if (!(sigma >= 64.0))
        sigma = 64.0;
    if (sigma > 0x1p60)
        sigma = 0x1p60;
    int k;
    double frac = frexp(sigma, &k) * 2.0; /* sigma = frac * 2^(k-1), frac in [1, 2) */
    int p = (int)((frac - 1.0) * 4.0 + 0.5);
    k -= 1;
    if (p > 3) {
        p = 0;
        k += 1;
    }
    ch->sigma_k = k;
    ch->sigma_p = p;
}

/* Squared residuals of the (rotating) EMA predictors of k <= BATCH lanes over n tokens, starting
 * from the channels' mu (mx, my); y == NULL: single channels. */
static void run_predictors(const float *const *x, const float *const *y, int k, int64_t n, const double *mx,
                           const double *my, const KvcLane *const *ln, double *ex, double *ey)
{
    const float *px_of[BATCH], *py_of[BATCH];
    double px[BATCH], py[BATCH], sx[BATCH] = {0}, sy[BATCH] = {0}, alpha[BATCH], cs[BATCH], sn[BATCH];
    for (int i = 0; i < BATCH; i++) {
        int j = i < k ? i : 0;
        px_of[i] = x[j];
        py_of[i] = y ? y[j] : x[j];
        px[i] = mx[j];
        py[i] = y ? my[j] : 0.0;
        alpha[i] = ln[j]->alpha_q8 / 256.0;
        cs[i] = ln[j]->cos_q14 / 16384.0;
        sn[i] = ln[j]->sin_q14 / 16384.0;
    }
    if (!y) {
        for (int64_t t = 0; t < n; t++)
            for (int i = 0; i < BATCH; i++) {
                double dx = px_of[i][t] - px[i];
                sx[i] += dx * dx;
                px[i] += alpha[i] * dx;
            }
    } else {
        for (int64_t t = 0; t < n; t++)
            for (int i = 0; i < BATCH; i++) {
                double dx = px_of[i][t] - px[i], dy = py_of[i][t] - py[i];
                sx[i] += dx * dx;
                sy[i] += dy * dy;
                double ux = px[i] + alpha[i] * dx, uy = py[i] + alpha[i] * dy;
                px[i] = cs[i] * ux - sn[i] * uy;
                py[i] = sn[i] * ux + cs[i] * uy;
            }
    }
    for (int i = 0; i < k; i++) {
        ex[i] = sx[i];
        ey[i] = sy[i];
    }
}

/* mu of a channel from the mean of its values */
static void set_mu(KvcChannel *ch, const KvcFormat *f, double m)
{
    if (f->kind == KVC_KIND_FLOAT) {
        ch->mu_word = kvc_fix_to_word(f, (int64_t)llround(m));
        ch->mu = kvc_float_to_fix(f, ch->mu_word);
    } else {
        long q8 = lround(m / 256.0);
        q8 = q8 > 32767 ? 32767 : (q8 < -32767 ? -32767 : q8);
        ch->mu_word = (uint16_t)(int16_t)q8;
        ch->mu = (int64_t)q8 * 256;
    }
}

/* mu and sigma of the channels of k <= BATCH lanes with their chosen predictors over all tokens. */
static void finish_lanes(KvcSection *s, const KvcLane *lanes, int k, const float *vals)
{
    int64_t n = s->n_tokens;
    int paired = lanes[0].ch[1] >= 0;
    const float *xy[2][BATCH];
    const KvcLane *ln[BATCH];
    double mu[2][BATCH], ex[BATCH], ey[BATCH];
    for (int i = 0; i < k; i++) {
        ln[i] = &lanes[i];
        for (int j = 0; j < 1 + paired; j++)
            xy[j][i] = vals + lanes[i].ch[j] * n;
    }
    for (int j = 0; j < 1 + paired; j++) {
        double m[BATCH];
        means_of(xy[j], k, n, m);
        for (int i = 0; i < k; i++) {
            KvcChannel *ch = &s->chans[lanes[i].ch[j]];
            set_mu(ch, s->fmt, m[i]);
            mu[j][i] = (double)ch->mu;
        }
    }
    run_predictors(xy[0], paired ? xy[1] : NULL, k, n, mu[0], mu[1], ln, ex, ey);
    for (int i = 0; i < k; i++) {
        quantize_sigma(&s->chans[lanes[i].ch[0]], sqrt(ex[i] / (double)(n ? n : 1)));
        if (paired)
            quantize_sigma(&s->chans[lanes[i].ch[1]], sqrt(ey[i] / (double)(n ? n : 1)));
    }
}

/* Cost of the lanes of one pair offset over the first n tokens. */
static double offset_cost(const KvcSection *s, const float *vals, int offset, int64_t n)
{
    double cost = 0;
    KvcLane ln[BATCH];
    const float *x[BATCH], *y[BATCH];
    int k = 0;
    for (int c = 0; c < s->n_channels; c++) {
        if (!(offset && (c / offset) % 2)) {
            x[k] = vals + c * s->n_tokens;
            y[k] = x[k] + offset * s->n_tokens;
            k++;
        }
        if (k == BATCH || (k && c + 1 == s->n_channels)) {
            double lane_cost[BATCH];
            choose_lanes(ln, x, offset ? y : NULL, k, n, 0, static_gain(s), lane_cost);
            for (int i = 0; i < k; i++)
                cost += lane_cost[i];
            k = 0;
        }
    }
    return cost;
}

static int choose_offset(const KvcSection *s, const float *vals)
{
    int64_t n = s->n_tokens < DETECT_WINDOW ? s->n_tokens : DETECT_WINDOW;
    int best = 0;
    double best_cost = offset_cost(s, vals, 0, n) - 0.01 * s->n_channels;
    for (size_t i = 0; i < sizeof(PAIR_CANDIDATES) / sizeof(int); i++) {
        int off = PAIR_CANDIDATES[i];
        if (off >= s->n_channels || s->n_channels % (2 * off))
            continue;
        double cost = offset_cost(s, vals, off, n);
        if (cost < best_cost) {
            best_cost = cost;
            best = off;
        }
    }
    return best;
}

size_t kvc_estimate_floats(const KvcSection *s)
{
    return (size_t)(s->n_channels * s->n_tokens + 1);
}

int kvc_estimate_section(KvcSection *s, int pair_offset, float *scratch)
{
    int64_t n = s->n_tokens;
    float *vals = scratch ? scratch : malloc(sizeof(float) * kvc_estimate_floats(s));
    if (!vals)
        return -1;
    load_values(s, vals);
    if (pair_offset < 0)
        pair_offset = n >= 16 ? choose_offset(s, vals) : 0;
    if (pair_offset > 65535)
        pair_offset = 0;
    if (pair_offset > 0 && (pair_offset >= s->n_channels || s->n_channels % (2 * pair_offset)))
        pair_offset = 0;
    s->n_lanes = kvc_make_lanes(s->lanes, s->n_channels, pair_offset);
    for (int l = 0; l < s->n_lanes; l += BATCH) {
        KvcLane *ln = &s->lanes[l];
        int k = s->n_lanes - l < BATCH ? s->n_lanes - l : BATCH;
        const float *x[BATCH], *y[BATCH];
        double cost[BATCH];
        for (int i = 0; i < k; i++) {
            x[i] = vals + ln[i].ch[0] * n;
            y[i] = ln[i].ch[1] >= 0 ? vals + ln[i].ch[1] * n : NULL;
        }
        choose_lanes(ln, x, y[0] ? y : NULL, k, n < WINDOW ? n : WINDOW, 1, static_gain(s), cost);
        finish_lanes(s, ln, k, vals);
    }
    for (int c = 0; c < s->n_channels; c++)
        kvc_channel_derive(&s->chans[c], s->fmt);
    if (!scratch)
        free(vals);
    return pair_offset;
}
