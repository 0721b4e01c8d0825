/* The context model of the portable token codec (see tokens_cm.h): adaptive counters in an
 * order-0 table and hashed order-1, -2, -3 and bucket-class contexts, a match model, a gated
 * logistic mixer (lpaq-style, integer) and an SSE stage.  Integer arithmetic only. */
#include <stdlib.h>

#include "tokens_cm.h"

#define N_HASHED 4                 /* order-1, order-2, order-3, bucket classes */
#define IN_O0 N_HASHED
#define IN_MATCH (N_HASHED + 1)
#define IN_BIAS (N_HASHED + 2)
#define IN_PRIOR (N_HASHED + 3)
#define N_INPUTS (N_HASHED + 4)
#define SETS_REP 12
#define SETS_NOVEL (SETS_REP + TOKCM_PHASES * 12)
#define N_SETS (SETS_NOVEL + TOKCM_PHASES)
#define SSE_REP 3
#define SSE_NOVEL (SSE_REP + TOKCM_PHASES * 3)
#define N_SSE (SSE_NOVEL + TOKCM_PHASES)
#define MATCH_MIN 3
#define NOVEL_SALT 0x80000000u

#ifndef MIX_RATE
#define MIX_RATE 64
#endif
#ifndef HASH_LIMIT
#define HASH_LIMIT 60
#endif
#ifndef O0_LIMIT
#define O0_LIMIT 255
#endif
#ifndef W_INIT
#define W_INIT 16000
#endif
#ifndef SSE_RATE
#define SSE_RATE 6
#endif
#ifndef SSE_MIX
#define SSE_MIX 2
#endif

static const uint16_t SQUASH_POINTS[129] = {
    22, 25, 28, 32, 36, 41, 47, 53, 60, 68, 77, 87, 98, 111, 126, 143, 162, 184, 208, 236, 267,
    302, 342, 387, 439, 497, 562, 636, 720, 815, 922, 1042, 1179, 1333, 1506, 1701, 1921, 2168,
    2446, 2758, 3108, 3500, 3938, 4427, 4971, 5577, 6249, 6992, 7812, 8714, 9702, 10782, 11955,
    13226, 14595, 16062, 17625, 19282, 21025, 22849, 24743, 26695, 28693, 30723, 32768, 34813,
    36843, 38841, 40793, 42687, 44511, 46254, 47911, 49474, 50941, 52310, 53581, 54754, 55834,
    56822, 57724, 58544, 59287, 59959, 60565, 61109, 61598, 62036, 62428, 62778, 63090, 63368,
    63615, 63835, 64030, 64203, 64357, 64494, 64614, 64721, 64816, 64900, 64974, 65039, 65097,
    65149, 65194, 65234, 65269, 65300, 65328, 65352, 65374, 65393, 65410, 65425, 65438, 65449,
    65459, 65468, 65476, 65483, 65489, 65495, 65500, 65504, 65508, 65511, 65514};

struct tokcm_model {
    int16_t stretch[4096];
    uint32_t reciprocal[1024];
    uint32_t *order0[2];           /* direct counters by node: seen-token walk, novel walk */
    uint32_t *hashed;              /* N_HASHED tables of 2^hash_bits counters */
    int32_t *match_table;          /* position after the last occurrence of each MATCH_MIN-gram */
    uint32_t n_nodes;
    int hash_bits, match_bits;
    uint32_t ctx[N_HASHED];        /* context hashes of the current token */
    int64_t match_ptr;
    int match_len;
    int32_t match_token;
    uint32_t match_counters[32];
    int32_t weights[N_SETS][N_INPUTS];
    uint32_t sse[N_SSE][33];
    /* the decision being coded */
    uint32_t *slot[N_INPUTS];
    int inputs[N_INPUTS];
    int set, p_mix, sse_cell, sse_index, expected, limit[N_INPUTS];
};

/* ---------------- fixed-point logistic helpers ---------------- */

static int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

static int squash(int x) /* logit in 1/256 units -> P(1) in 1/65536 */
{
    int shifted = clamp_int(x, -2047, 2047) + 2048, i = shifted >> 5, w = shifted & 31;
    return (SQUASH_POINTS[i] * (32 - w) + SQUASH_POINTS[i + 1] * w + 16) >> 5;
}

static void init_tables(tokcm_model *m)
{
    int next = 0;
    for (int x = -2047; x <= 2047; x++) {
        int v = squash(x) >> 4;
        for (int j = next; j <= v; j++) m->stretch[j] = (int16_t)x;
        if (v + 1 > next) next = v + 1;
    }
    for (int j = next; j < 4096; j++) m->stretch[j] = 2047;
    for (int n = 0; n < 1024; n++) m->reciprocal[n] = (uint32_t)(131072u / (2u * n + 3u));
}

static int stretch16(const tokcm_model *m, int p16) { return m->stretch[clamp_int(p16, 0, 65535) >> 4]; }

/* Counter: P(1) in the high 22 bits, observation count in the low 10. */
#define COUNTER_INIT (1u << 31)

static int counter_p16(uint32_t c) { return (int)(c >> 16); }

static void counter_update(const tokcm_model *m, uint32_t *c, int bit, int limit)
{
    uint32_t n = *c & 1023u;
    int32_t p = (int32_t)(*c >> 10);
    int32_t target = bit ? (1 << 22) - 1 : 0;
    p += (int32_t)(((int64_t)(target - p) * m->reciprocal[n]) >> 16);
    *c = ((uint32_t)p << 10) | (n < (uint32_t)limit ? n + 1 : n);
}

/* ---------------- hashing ---------------- */

static uint32_t mix32(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    h ^= h >> 16;
    return h;
}

int tokcm_bit_length(uint32_t v)
{
    int n = 0;
    while (v) { n++; v >>= 1; }
    return n;
}

static uint32_t token_at(const int32_t *tokens, int64_t i) { return i >= 0 ? (uint32_t)tokens[i] : 0xFFFFFFFFu; }

/* ---------------- lifetime ---------------- */

static uint32_t *counters_new(size_t n)
{
    uint32_t *c = malloc(n * sizeof *c);
    if (c)
        for (size_t i = 0; i < n; i++) c[i] = COUNTER_INIT;
    return c;
}

void tokcm_model_free(tokcm_model *m)
{
    if (!m) return;
    free(m->order0[0]);
    free(m->order0[1]);
    free(m->hashed);
    free(m->match_table);
    free(m);
}

tokcm_model *tokcm_model_new(int64_t n_tokens, uint32_t n_nodes)
{
    tokcm_model *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    init_tables(m);
    uint32_t n = (uint32_t)(n_tokens < (1 << 24) ? n_tokens : (1 << 24));
    m->n_nodes = n_nodes;
    m->hash_bits = clamp_int(tokcm_bit_length(n * 16u) + 1, 12, 21);
    m->match_bits = clamp_int(tokcm_bit_length(n) + 1, 8, 22);
    m->order0[0] = counters_new(n_nodes);
    m->order0[1] = counters_new(n_nodes);
    m->hashed = counters_new((size_t)N_HASHED << m->hash_bits);
    m->match_table = calloc((size_t)1 << m->match_bits, sizeof(int32_t));
    if (!m->order0[0] || !m->order0[1] || !m->hashed || !m->match_table) {
        tokcm_model_free(m);
        return NULL;
    }
    for (int c = 0; c < N_SSE; c++)
        for (int j = 0; j < 33; j++) m->sse[c][j] = (uint32_t)squash((j - 16) * 128);
    for (int s = 0; s < N_SETS; s++)
        for (int j = 0; j < N_INPUTS; j++) m->weights[s][j] = W_INIT;
    for (int j = 0; j < 32; j++) m->match_counters[j] = COUNTER_INIT;
    return m;
}

/* ---------------- per token: contexts and the match model ---------------- */

static uint32_t ngram_hash(const tokcm_model *m, const int32_t *tokens, int64_t end)
{
    uint32_t h = 0x5bd1e995u;
    for (int64_t j = end - MATCH_MIN; j < end; j++) h = mix32(h ^ (uint32_t)tokens[j]);
    return h >> (32 - m->match_bits);
}

static void match_find(tokcm_model *m, const int32_t *tokens, int64_t i)
{
    m->match_token = -1;
    if (i < MATCH_MIN) return;
    uint32_t h = ngram_hash(m, tokens, i);
    if (m->match_len == 0) {
        int64_t cand = m->match_table[h];
        int len = 0;
        while (len < 32 && cand - 1 - len >= 0 && tokens[cand - 1 - len] == tokens[i - 1 - len]) len++;
        if (len >= MATCH_MIN) {
            m->match_ptr = cand;
            m->match_len = len;
        }
    }
    if (m->match_len > 0) m->match_token = tokens[m->match_ptr];
    m->match_table[h] = (int32_t)i;
}

int32_t tokcm_model_begin(tokcm_model *m, const int32_t *tokens, int64_t i)
{
    uint32_t t1 = token_at(tokens, i - 1), t2 = token_at(tokens, i - 2), t3 = token_at(tokens, i - 3);
    m->ctx[0] = mix32(t1 + 0x1000193u);
    m->ctx[1] = mix32(t2 ^ mix32(t1 + 0x2000193u));
    m->ctx[2] = mix32(t3 ^ mix32(t2 ^ mix32(t1 + 0x3000193u)));
    uint32_t k1 = (uint32_t)tokcm_bit_length(t1 + 1u), k2 = (uint32_t)tokcm_bit_length(t2 + 1u);
    m->ctx[3] = mix32(k1 * 64u + k2 + 0x4000193u);
    match_find(m, tokens, i);
    return m->match_token;
}

void tokcm_model_end(tokcm_model *m, const int32_t *tokens, int64_t i)
{
    if (m->match_len == 0) return;
    if (m->match_token == tokens[i]) {
        m->match_ptr++;
        if (m->match_len < 65535) m->match_len++;
    } else {
        m->match_len = 0;
    }
}

/* ---------------- one binary decision ---------------- */

static void add_input(tokcm_model *m, int j, uint32_t *slot, int limit)
{
    m->slot[j] = slot;
    m->limit[j] = limit;
    m->inputs[j] = slot ? stretch16(m, counter_p16(*slot)) : 0;
}

/* Hashed contexts; the novel walk only uses the bucket-class context. Returns the highest
 * order (1..3) whose slot has been seen, 0 if none. */
static int add_hashed_inputs(tokcm_model *m, const tokcm_decision *d)
{
    int conf = 0;
    uint32_t key = d->branch == TOKCM_NOVEL ? d->node ^ NOVEL_SALT : d->node;
    for (int j = 0; j < N_HASHED; j++) {
        uint32_t *slot = NULL;
        if (d->branch != TOKCM_NOVEL || j == N_HASHED - 1) {
            uint32_t idx = mix32(m->ctx[j] + key * 0x9E3779B1u) >> (32 - m->hash_bits);
            slot = &m->hashed[((size_t)j << m->hash_bits) | idx];
            if (j < 3 && (*slot & 1023u)) conf = j + 1;
        }
        add_input(m, j, slot, HASH_LIMIT);
    }
    return conf;
}

/* Returns 0 without a match prediction, 1 for a short match, 2 for a long one. */
static int add_match_input(tokcm_model *m, int expected)
{
    m->expected = expected;
    m->slot[IN_MATCH] = NULL;
    m->inputs[IN_MATCH] = 0;
    if (expected < 0) return 0;
    int len = m->match_len > 31 ? 31 : m->match_len;
    int st = stretch16(m, counter_p16(m->match_counters[len]));
    m->slot[IN_MATCH] = &m->match_counters[len];
    m->inputs[IN_MATCH] = expected ? st : -st;
    return len < 16 ? 1 : 2;
}

static void select_sets(tokcm_model *m, const tokcm_decision *d, int conf, int mstate)
{
    if (d->branch == TOKCM_FLAG) {
        m->set = conf * 3 + mstate;
        m->sse_cell = mstate;
    } else if (d->branch == TOKCM_REP) {
        m->set = SETS_REP + (d->phase * 4 + conf) * 3 + mstate;
        m->sse_cell = SSE_REP + d->phase * 3 + mstate;
    } else {
        m->set = SETS_NOVEL + d->phase;
        m->sse_cell = SSE_NOVEL + d->phase;
    }
}

int tokcm_model_predict(tokcm_model *m, const tokcm_decision *d)
{
    int conf = add_hashed_inputs(m, d);
    add_input(m, IN_O0, &m->order0[d->branch == TOKCM_NOVEL][d->node], O0_LIMIT);
    int mstate = add_match_input(m, d->expected);
    add_input(m, IN_BIAS, NULL, 0);
    m->inputs[IN_BIAS] = 256;
    add_input(m, IN_PRIOR, NULL, 0);
    m->inputs[IN_PRIOR] = stretch16(m, d->prior16);
    select_sets(m, d, conf, mstate);
    int64_t dot = 0;
    for (int j = 0; j < N_INPUTS; j++) dot += (int64_t)m->weights[m->set][j] * m->inputs[j];
    m->p_mix = squash((int)(dot >> 16));
    int pos = clamp_int(stretch16(m, m->p_mix) + 2048, 0, 4095), w = pos & 127;
    const uint32_t *cells = m->sse[m->sse_cell];
    int p_sse = (int)((cells[pos >> 7] * (uint32_t)(128 - w) + cells[(pos >> 7) + 1] * (uint32_t)w) >> 7);
    m->sse_index = (pos >> 7) + (w >> 6);
    return clamp_int((m->p_mix * (4 - SSE_MIX) + SSE_MIX * p_sse) >> 2, 32, 65536 - 32);
}

void tokcm_model_update(tokcm_model *m, int bit)
{
    for (int j = 0; j < N_INPUTS; j++)
        if (m->slot[j] && j != IN_MATCH) counter_update(m, m->slot[j], bit, m->limit[j]);
    if (m->slot[IN_MATCH]) counter_update(m, m->slot[IN_MATCH], bit == m->expected, 1023);
    int err = ((bit << 16) - m->p_mix) * MIX_RATE;
    for (int j = 0; j < N_INPUTS; j++)
        m->weights[m->set][j] += (int32_t)(((int64_t)m->inputs[j] * err) >> 20);
    uint32_t *cell = &m->sse[m->sse_cell][m->sse_index];
    int32_t target = bit ? 65535 : 0;
    *cell = (uint32_t)((int32_t)*cell + ((target - (int32_t)*cell) >> SSE_RATE));
}
