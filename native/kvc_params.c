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

/* Every element of the section as a float (fixed-point units), channel after channel. */
static float *load_values(const KvcSection *s)
{
    const KvcFormat *f = s->fmt;
    int64_t n = s->n_tokens;
    float *vals = malloc(sizeof(float) * (size_t)(s->n_channels * n + 1));
    float base[KVC_MAX_A], scale[KVC_MAX_A];
    if (!vals)
        return NULL;
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
    return vals;
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

/* Squared residuals of the (rotating) EMA predictor over n tokens; y may be NULL. */
static void run_predictor(const float *x, const float *y, int64_t n, double mx, double my, double alpha,
                          double cs, double sn, double *ex, double *ey)
{
    double px = mx, py = my, sx = 0, sy = 0;
    for (int64_t t = 0; t < n; t++) {
        double dx = x[t] - px;
        sx += dx * dx;
        if (!y) {
            px += alpha * dx;
            continue;
        }
        double dy = y[t] - py;
        sy += dy * dy;
        double ux = px + alpha * dx, uy = py + alpha * dy;
        px = cs * ux - sn * uy;
        py = sn * ux + cs * uy;
    }
    *ex = sx;
    *ey = sy;
}

static double mean_of(const float *x, int64_t n)
{
    double s = 0;
    for (int64_t t = 0; t < n; t++)
        s += x[t];
    return n ? s / (double)n : 0.0;
}

static double rotation_angle(const float *x, const float *y, int64_t n, double mx, double my)
{
    double re = 0, im = 0;
    for (int64_t t = 1; t < n; t++) {
        double ax = x[t] - mx, ay = y[t] - my, bx = x[t - 1] - mx, by = y[t - 1] - my;
        re += ax * bx + ay * by;
        im += ay * bx - ax * by;
    }
    return atan2(im, re);
}

static double log_cost(double sq, int64_t n)
{
    return 0.5 * log2(sq / (double)(n ? n : 1) + 1.0);
}

/* Choose alpha (and the rotation of a pair) on the first n tokens; returns the cost. */
/* Squared residuals of the N_ALPHA predictors (one per alpha) of a lane over n tokens, all in
 * one pass (the 8-wide inner loops vectorize). */
static void run_alphas(const float *x, const float *y, int64_t n, float mx, float my, float cs, float sn,
                       double *ex, double *ey)
{
    float a[8], px[8], py[8], sx[8], sy[8];
    for (int k = 0; k < 8; k++) {
        a[k] = k < N_ALPHA ? (float)ALPHAS_Q8[k] / 256.0f : 0.0f;
        px[k] = mx;
        py[k] = my;
        sx[k] = sy[k] = 0.0f;
    }
    for (int64_t t = 0; t < n; t++) {
        float xt = x[t], yt = y ? y[t] : 0.0f;
        for (int k = 0; k < 8; k++) {
            float dx = xt - px[k], dy = yt - py[k];
            sx[k] += dx * dx;
            sy[k] += dy * dy;
            float ux = px[k] + a[k] * dx, uy = py[k] + a[k] * dy;
            px[k] = cs * ux - sn * uy;
            py[k] = sn * ux + cs * uy;
        }
    }
    for (int k = 0; k < N_ALPHA; k++) {
        ex[k] = sx[k];
        ey[k] = sy[k];
    }
}

/* Choose alpha (and the rotation of a pair) on the first n tokens; returns the cost. */
static double choose_lane(KvcLane *ln, const float *x, const float *y, int64_t n, int try_zero_angle)
{
    double mx = mean_of(x, n), my = y ? mean_of(y, n) : 0.0;
    double angles[2] = {y ? rotation_angle(x, y, n, mx, my) : 0.0, 0.0};
    double best = INFINITY;
    for (int ai = 0; ai < (y && try_zero_angle ? 2 : 1); ai++) {
        int32_t cs = (int32_t)lround(cos(angles[ai]) * 16384.0), sn = (int32_t)lround(sin(angles[ai]) * 16384.0);
        double ex[N_ALPHA], ey[N_ALPHA];
        run_alphas(x, y, n, (float)mx, (float)my, (float)cs / 16384.0f, y ? (float)sn / 16384.0f : 0.0f, ex, ey);
        for (int k = 0; k < N_ALPHA; k++) {
            double cost = log_cost(ex[k], n) + (y ? log_cost(ey[k], n) : 0.0);
            if (cost < best - 1e-9) {
                best = cost;
                ln->alpha_q8 = ALPHAS_Q8[k];
                ln->cos_q14 = y ? cs : 1 << 14;
                ln->sin_q14 = y ? sn : 0;
            }
        }
    }
    return best;
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

/* mu and sigma of the lane's channels with the chosen predictor over all tokens. */
static void finish_lane(KvcSection *s, const KvcLane *ln, const float *x, const float *y)
{
    int64_t n = s->n_tokens;
    int paired = ln->ch[1] >= 0;
    for (int i = 0; i < 1 + paired; i++) {
        KvcChannel *ch = &s->chans[ln->ch[i]];
        double m = mean_of(i ? y : x, n);
        if (s->fmt->kind == KVC_KIND_FLOAT) {
            ch->mu_word = kvc_fix_to_word(s->fmt, (int64_t)llround(m));
            ch->mu = kvc_float_to_fix(s->fmt, ch->mu_word);
        } else {
            long q8 = lround(m / 256.0);
            q8 = q8 > 32767 ? 32767 : (q8 < -32767 ? -32767 : q8);
            ch->mu_word = (uint16_t)(int16_t)q8;
            ch->mu = (int64_t)q8 * 256;
        }
    }
    double ex, ey;
    run_predictor(x, paired ? y : NULL, n, (double)s->chans[ln->ch[0]].mu,
                  paired ? (double)s->chans[ln->ch[1]].mu : 0.0, ln->alpha_q8 / 256.0,
                  ln->cos_q14 / 16384.0, ln->sin_q14 / 16384.0, &ex, &ey);
    quantize_sigma(&s->chans[ln->ch[0]], sqrt(ex / (double)(n ? n : 1)));
    if (paired)
        quantize_sigma(&s->chans[ln->ch[1]], sqrt(ey / (double)(n ? n : 1)));
}

/* Cost of the lanes of one pair offset over the first n tokens. */
static double offset_cost(const KvcSection *s, const float *vals, int offset, int64_t n)
{
    double cost = 0;
    for (int c = 0; c < s->n_channels; c++) {
        if (offset && (c / offset) % 2)
            continue;
        KvcLane ln;
        const float *x = vals + c * s->n_tokens;
        cost += choose_lane(&ln, x, offset ? x + offset * s->n_tokens : NULL, n, 0);
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

int kvc_estimate_section(KvcSection *s, int pair_offset)
{
    int64_t n = s->n_tokens;
    float *vals = load_values(s);
    if (!vals)
        return -1;
    if (pair_offset < 0)
        pair_offset = n >= 16 ? choose_offset(s, vals) : 0;
    if (pair_offset > 65535)
        pair_offset = 0;
    if (pair_offset > 0 && (pair_offset >= s->n_channels || s->n_channels % (2 * pair_offset)))
        pair_offset = 0;
    s->n_lanes = kvc_make_lanes(s->lanes, s->n_channels, pair_offset);
    for (int l = 0; l < s->n_lanes; l++) {
        KvcLane *ln = &s->lanes[l];
        const float *x = vals + ln->ch[0] * n, *y = ln->ch[1] >= 0 ? vals + ln->ch[1] * n : NULL;
        choose_lane(ln, x, y, n < WINDOW ? n : WINDOW, 1);
        finish_lane(s, ln, x, y);
    }
    for (int c = 0; c < s->n_channels; c++)
        kvc_channel_derive(&s->chans[c], s->fmt);
    free(vals);
    return pair_offset;
}
