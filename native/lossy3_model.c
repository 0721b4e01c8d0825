/* lossy3_model.c -- see lossy3_model.h: models, their rANS tables, statistics and cost estimates. */
#include "lossy3_model.h"
#include "segcode_core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* the model's weights and their logistic codes are the segment coder's (segcode_core.h): one implementation */
_Static_assert(LOSSY3_KMAX == SEGC2_KMAX, "lossy format 3 and segment format 2 share their symbol model");

static uint32_t l3_code(double p)
{
    p = p < 1e-6 ? 1e-6 : p > 1 - 1e-6 ? 1 - 1e-6 : p;
    double u = 128.0 + 16.0 * log2(p / (1.0 - p));
    return u < 0 ? 0u : u > 255 ? 255u : (uint32_t)lrint(u);
}

/* symbol of a magnitude m and sign: 0, then (+1, -1, +2, -2, ...), then the escape */
void l3_table(const L3Params *p, L3Table *t)
{
    uint64_t w[L3_NSYM_MAX], sum = 0;
    uint32_t n_sym = segc2_weights(p->k, p->u[0], p->u[1], p->u[2], w);
    for (uint32_t s = 0; s < n_sym; s++)
        sum += w[s];
    uint32_t total = 0, best = 0;
    for (uint32_t s = 0; s < n_sym; s++) {
        uint64_t f = sum ? w[s] * L3_M / sum : 0;
        t->freq[s] = (uint16_t)(f ? f : 1);
        total += t->freq[s];
        if (t->freq[s] > t->freq[best])
            best = s;
    }
    while (total > L3_M) { /* the floor of 1 overshot: take slots from the largest symbols */
        uint32_t take = total - L3_M, room = t->freq[best] - 1u;
        take = take < room ? take : room;
        t->freq[best] = (uint16_t)(t->freq[best] - take);
        total -= take;
        for (uint32_t s = 0; s < n_sym; s++)
            if (t->freq[s] > t->freq[best])
                best = s;
    }
    t->freq[best] = (uint16_t)(t->freq[best] + (L3_M - total));
    t->n_sym = n_sym;
    uint32_t cum = 0;
    for (uint32_t s = 0; s < n_sym; s++) {
        t->start[s] = (uint16_t)cum;
        cum += t->freq[s];
    }
}

/* the model of a channel fitted to its statistics (moments of the magnitudes) */
void l3_fit(const L3Stats *s, L3Params *p)
{
    uint64_t n = 0, n_tail = 0, tail_sum = 0;
    for (uint32_t m = 0; m < L3_HIST; m++)
        n += s->hist[m];
    p->k = s->max_mag >= LOSSY3_KMAX ? LOSSY3_KMAX : s->max_mag + 1;
    p->u[0] = p->u[1] = p->u[2] = 128;
    if (n == 0 || p->k == 1)
        return;
    for (uint32_t m = 2; m < LOSSY3_KMAX; m++) {
        n_tail += s->hist[m];
        tail_sum += (uint64_t)s->hist[m] * (m - 2);
    }
    n_tail += s->hist[LOSSY3_KMAX];
    tail_sum += (uint64_t)s->hist[LOSSY3_KMAX] * (LOSSY3_KMAX - 2); /* a floor: escapes are rare */
    double n0 = s->hist[0], n1 = s->hist[1];
    p->u[0] = (uint8_t)l3_code((n0 + 0.5) / ((double)n + 1.0));
    p->u[1] = (uint8_t)l3_code((n1 + 0.5) / ((double)(n - s->hist[0]) + 1.0));
    double mean = n_tail ? (double)tail_sum / (double)n_tail : 0.0;
    p->u[2] = (uint8_t)l3_code(mean / (1.0 + mean) + 1e-3);
}

static uint32_t l3_param_bits(const L3Params *p)
{
    return 6 + (p->k >= 2 ? 8 : 0) + (p->k >= 3 ? 16 : 0);
}

/* bits that coding a channel with these statistics under model p costs (header included) */
static double l3_cost(const L3Stats *s, const L3Params *p)
{
    double bits = l3_param_bits(p);
    if (p->k == 1)
        return bits;
    L3Table t;
    l3_table(p, &t);
    for (uint32_t m = 0; m < p->k; m++)
        if (s->hist[m])
            bits += s->hist[m] * (LOSSY3_SCALE - log2((double)t.freq[m ? 2 * m - 1 : 0]));
    if (p->k == LOSSY3_KMAX && s->hist[LOSSY3_KMAX])
        bits += s->hist[LOSSY3_KMAX] * (LOSSY3_SCALE - log2((double)t.freq[t.n_sym - 1])) + (double)s->esc_bits;
    return bits;
}

/* coordinate search around the moment fit: each code moved while it saves bits */
void l3_refine(const L3Stats *s, L3Params *p)
{
    if (p->k == 1)
        return;
    double best = l3_cost(s, p);
    uint32_t n_params = p->k >= 3 ? 3 : 1;
    for (uint32_t i = 0; i < n_params; i++) {
        for (int dir = -1; dir <= 1; dir += 2) {
            for (;;) {
                int v = (int)p->u[i] + dir;
                if (v < 0 || v > 255)
                    break;
                L3Params trial = *p;
                trial.u[i] = (uint8_t)v;
                double c = l3_cost(s, &trial);
                if (c >= best)
                    break;
                best = c;
                *p = trial;
            }
        }
    }
}

static void l3_stats(const float *x, uint32_t n_rows, uint32_t n_channels, const float *inv_step,
                     uint32_t row_every, L3Stats *stats)
{
    memset(stats, 0, sizeof(L3Stats) * n_channels);
    for (uint32_t t = 0; t < n_rows; t += row_every) {
        const float *row = x + (size_t)t * n_channels;
        for (uint32_t c = 0; c < n_channels; c++)
            l3_count(&stats[c], l3_quantize(row[c], inv_step[c]));
    }
}

/* the size in bits of a stream of n_rows rows whose statistics over n_sampled of them are stats */
static double l3_stream_bits(const L3Stats *stats, uint32_t n_channels, uint32_t n_sampled, uint32_t n_rows)
{
    double coded = 0.0, header = 0.0;
    for (uint32_t c = 0; c < n_channels; c++) {
        L3Params p;
        l3_fit(&stats[c], &p);
        double b = l3_cost(&stats[c], &p), h = l3_param_bits(&p);
        coded += b - h;
        header += h;
    }
    return header + coded * ((double)n_rows / (double)n_sampled) + 8.0 * 4 * LOSSY3_STATES + 8.0;
}

double lossy3_cost(const float *x, uint32_t n_rows, uint32_t n_channels, const float *inv_step, uint32_t row_every)
{
    if (n_rows == 0 || n_channels == 0)
        return 0.0;
    if (row_every == 0)
        row_every = 1;
    L3Stats *stats = malloc(sizeof(L3Stats) * n_channels);
    if (!stats)
        return -1.0;
    l3_stats(x, n_rows, n_channels, inv_step, row_every, stats);
    double bits = l3_stream_bits(stats, n_channels, (n_rows + row_every - 1) / row_every, n_rows);
    free(stats);
    return bits;
}

double lossy3_cost_sample(const float *x, uint32_t n_sampled, uint32_t n_channels, const float *inv_step,
                          uint32_t n_rows)
{
    if (n_rows == 0 || n_sampled == 0 || n_channels == 0)
        return 0.0;
    L3Stats *stats = malloc(sizeof(L3Stats) * n_channels);
    if (!stats)
        return -1.0;
    l3_stats(x, n_sampled, n_channels, inv_step, 1, stats);
    double bits = l3_stream_bits(stats, n_channels, n_sampled, n_rows);
    free(stats);
    return bits;
}
