/* lossy.c -- see lossy.h. */
#include "lossy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rans.h"

#define ESC (LOSSY_ALPHABET - 1)
#define REBUILD_EVERY 256u
#define HALVE_AT (1u << 24)

typedef struct {
    uint32_t count[LOSSY_ALPHABET];
    uint32_t cum[LOSSY_ALPHABET + 1]; /* cum[s] .. cum[s + 1]: the slots of s */
    uint32_t total, seen, next_rebuild;
} ChannelModel;

static void model_rebuild(ChannelModel *m)
{
    const uint32_t target = 1u << LOSSY_SCALE;
    uint32_t freq[LOSSY_ALPHABET], sum = 0, best = 0;
    for (int s = 0; s < LOSSY_ALPHABET; s++) {
        uint64_t f = (uint64_t)m->count[s] * target / m->total;
        freq[s] = f ? (uint32_t)f : 1;
        sum += freq[s];
        if (freq[s] > freq[best])
            best = (uint32_t)s;
    }
    /* the most frequent symbol absorbs the rounding (it holds at least target / ALPHABET slots) */
    freq[best] = freq[best] + target - sum;
    m->cum[0] = 0;
    for (int s = 0; s < LOSSY_ALPHABET; s++)
        m->cum[s + 1] = m->cum[s] + freq[s];
}

static void model_init(ChannelModel *m)
{
    m->total = 0;
    for (int s = 0; s < LOSSY_ALPHABET; s++) {
        m->count[s] = s < 6 ? 64u >> s : 1u;
        m->total += m->count[s];
    }
    m->seen = 0;
    m->next_rebuild = 1;
    model_rebuild(m);
}

static inline void model_update(ChannelModel *m, uint32_t s)
{
    m->count[s] += 32;
    m->total += 32;
    if (++m->seen == m->next_rebuild) {
        if (m->total >= HALVE_AT) {
            m->total = 0;
            for (int i = 0; i < LOSSY_ALPHABET; i++)
                m->total += (m->count[i] = (m->count[i] + 1) >> 1);
        }
        model_rebuild(m);
        m->next_rebuild = m->seen < REBUILD_EVERY ? 2 * m->seen : m->seen + REBUILD_EVERY;
    }
}

static inline uint32_t zigzag(int32_t v) { return v >= 0 ? 2u * (uint32_t)v : 2u * (uint32_t)(-v) - 1u; }
static inline int32_t unzigzag(uint32_t z) { return (z & 1u) ? -(int32_t)((z + 1u) >> 1) : (int32_t)(z >> 1); }

size_t lossy_encode_bound(size_t n_values)
{
    return 4 * rans64_enc_bound_words(2 * n_values, 2) + 16;
}

int64_t lossy_encode(const int32_t *q, uint32_t n_tokens, uint32_t n_channels, uint8_t *out, size_t cap)
{
    size_t n = (size_t)n_tokens * n_channels;
    if (n == 0)
        return 0;
    if (cap < lossy_encode_bound(n))
        return SKV_ERR_CAPACITY;
    ChannelModel *models = malloc(sizeof(ChannelModel) * n_channels);
    uint32_t *steps = malloc(sizeof(uint32_t) * 2 * n); /* (start << 16 | escape raw) is too tight: keep pairs */
    if (!models || !steps) {
        free(models);
        free(steps);
        return SKV_ERR_MEMORY;
    }
    for (uint32_t c = 0; c < n_channels; c++)
        model_init(&models[c]);
    /* forward pass: the model state the decoder will see for each symbol */
    for (size_t i = 0; i < n; i++) {
        uint32_t c = (uint32_t)(i % n_channels);
        ChannelModel *m = &models[c];
        int32_t v = q[i];
        if (v > LOSSY_MAX_ABS) v = LOSSY_MAX_ABS;
        if (v < -LOSSY_MAX_ABS) v = -LOSSY_MAX_ABS;
        uint32_t z = zigzag(v), s = z < ESC ? z : ESC;
        steps[2 * i] = m->cum[s];
        steps[2 * i + 1] = (m->cum[s + 1] - m->cum[s]) | (s == ESC ? (z - ESC + 1u) << 16 : 0u);
        model_update(m, s);
    }
    /* backward pass: rANS codes in reverse decoding order */
    Rans64State st[2];
    rans64_enc_init(&st[0]);
    rans64_enc_init(&st[1]);
    uint8_t *ptr = out + cap;
    for (size_t i = n; i-- > 0;) {
        Rans64State *r = &st[i & 1];
        uint32_t start = steps[2 * i], packed = steps[2 * i + 1];
        uint32_t freq = packed & 0xFFFFu, esc = packed >> 16;
        if (esc)
            rans64_enc_put_bits(r, &ptr, esc - 1u, LOSSY_ESCAPE_BITS);
        rans64_enc_put(r, &ptr, start, freq, LOSSY_SCALE);
    }
    rans64_enc_flush(&st[1], &ptr);
    rans64_enc_flush(&st[0], &ptr);
    size_t size = (size_t)(out + cap - ptr);
    memmove(out, ptr, size);
    free(models);
    free(steps);
    return (int64_t)size;
}

int lossy_decode(const uint8_t *in, size_t n_in, uint32_t n_tokens, uint32_t n_channels, int32_t *q)
{
    size_t n = (size_t)n_tokens * n_channels;
    if (n == 0)
        return n_in == 0 ? SKV_OK : SKV_ERR_CORRUPT;
    ChannelModel *models = malloc(sizeof(ChannelModel) * n_channels);
    if (!models)
        return SKV_ERR_MEMORY;
    for (uint32_t c = 0; c < n_channels; c++)
        model_init(&models[c]);
    const uint8_t *ptr = in, *end = in + n_in;
    Rans64State st[2];
    int err = 0;
    if (rans64_dec_init(&st[0], &ptr, end) || rans64_dec_init(&st[1], &ptr, end)) {
        free(models);
        return SKV_ERR_CORRUPT;
    }
    for (size_t i = 0; i < n; i++) {
        Rans64State *r = &st[i & 1];
        ChannelModel *m = &models[i % n_channels];
        uint32_t slot = rans64_dec_get(r, LOSSY_SCALE), s = 0;
        while (m->cum[s + 1] <= slot)
            s++;
        rans64_dec_advance(r, &ptr, end, m->cum[s], m->cum[s + 1] - m->cum[s], LOSSY_SCALE, &err);
        uint32_t z = s;
        if (s == ESC)
            z = ESC + rans64_dec_get_bits(r, &ptr, end, LOSSY_ESCAPE_BITS, &err);
        q[i] = unzigzag(z);
        model_update(m, s);
    }
    free(models);
    if (err || ptr != end || !rans64_dec_finished(&st[0]) || !rans64_dec_finished(&st[1]))
        return SKV_ERR_CORRUPT;
    return 0;
}

void lossy_quantize(const float *x, uint32_t n_tokens, uint32_t n_channels, const float *offset,
                    const float *inv_step, int32_t *q)
{
    for (size_t t = 0; t < n_tokens; t++) {
        const float *row = x + t * n_channels;
        int32_t *qrow = q + t * n_channels;
        for (uint32_t c = 0; c < n_channels; c++) {
            float v = (row[c] - offset[c]) * inv_step[c];
            v = v > LOSSY_MAX_ABS ? LOSSY_MAX_ABS : v < -LOSSY_MAX_ABS ? -LOSSY_MAX_ABS : v;
            qrow[c] = (int32_t)lrintf(v);
        }
    }
}

void lossy_dequantize(const int32_t *q, uint32_t n_tokens, uint32_t n_channels, const float *offset,
                      const float *step, float *x)
{
    for (size_t t = 0; t < n_tokens; t++) {
        const int32_t *qrow = q + t * n_channels;
        float *row = x + t * n_channels;
        for (uint32_t c = 0; c < n_channels; c++)
            row[c] = offset[c] + (float)qrow[c] * step[c];
    }
}
