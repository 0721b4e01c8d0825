/* Model-coded tokens: rANS with the language model's next-token distribution.
 *
 * A float32 logits row becomes integer frequencies the same way on every machine:
 *   y_i  = clamp(logit_i, +-LOGIT_LIMIT)              (NaN -> -LOGIT_LIMIT)
 *   t_i  = trunc(min((max y - y_i) * log2(e) * 1024, EXP_STEPS))   two IEEE float ops, exact
 *          rounding on every machine (no libm, no contraction possible: a subtract, a multiply;
 *          flush-to-zero modes cannot matter: a subnormal operand or gap truncates t to 0 anyway)
 *   w_i  = 2^30 * 2^(-t_i / 1024)                      integer table built with integer math
 *   start_i = floor(C_i * (2^31 - V) / W) + i,  C_i = sum_{j<i} w_j,  W = C_V
 * so every token has freq_i = start_{i+1} - start_i >= 1 and the row sums to 2^31. */
#include <stdlib.h>
#include <string.h>

#include "rans.h"
#include "tokens.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF             /* nothing here can contract; say it anyway */
#endif

#define LOGIT_LIMIT 16384.0f
#define LOG2E_1024 1477.3197f            /* log2(e) * 2^EXP2_FRAC, rounded to float */
#define EXP2_FRAC 10
#define EXP_STEPS (31 << EXP2_FRAC)     /* 2^-31 relative to the top token: weight 0 */
#define EXP2_ONE (1ull << 30)
#define EXP2_STEP 4292061010ull          /* round(2^(-1/1024) * 2^32) */
#define SCALE (1u << TOKM_SCALE_BITS)
#define BLOCK 64                         /* decoder: cumulative weights per block of tokens */

struct tokm_rows {
    int32_t n_vocab;
    uint32_t weights[EXP_STEPS + 1];     /* 2^30 * 2^(-t/1024) */
};

typedef struct {
    float max_logit;
    uint64_t scale;                      /* floor((2^31 - V) * 2^32 / W) */
} row_math;

/* ---------------- fixed point ---------------- */

tokm_rows *tokm_rows_new(int32_t n_vocab)
{
    if (n_vocab < 1 || n_vocab > (1 << 24)) return NULL;
    tokm_rows *rows = malloc(sizeof *rows);
    if (!rows) return NULL;
    rows->n_vocab = n_vocab;
    uint32_t fraction[1 << EXP2_FRAC];
    uint64_t v = EXP2_ONE;
    for (int j = 0; j < (1 << EXP2_FRAC); j++) {
        fraction[j] = (uint32_t)v;
        v = (v * EXP2_STEP + (1ull << 31)) >> 32;
    }
    for (int t = 0; t < EXP_STEPS; t++) rows->weights[t] = fraction[t & ((1 << EXP2_FRAC) - 1)] >> (t >> EXP2_FRAC);
    rows->weights[EXP_STEPS] = 0;
    return rows;
}

void tokm_rows_free(tokm_rows *rows)
{
    free(rows);
}

static float clamp_logit(float x)
{
    float y = x > -LOGIT_LIMIT ? x : -LOGIT_LIMIT;    /* NaN and -inf fall here too */
    return y < LOGIT_LIMIT ? y : LOGIT_LIMIT;
}

/* Exact whatever the order: max is associative on the NaN-free clamped values. */
static float row_max(const float *logits, int32_t n_vocab)
{
    float lane[8];
    for (int j = 0; j < 8; j++) lane[j] = -LOGIT_LIMIT;
    int32_t i = 0;
    for (; i + 8 <= n_vocab; i += 8)
        for (int j = 0; j < 8; j++) {
            float y = clamp_logit(logits[i + j]);
            lane[j] = y > lane[j] ? y : lane[j];
        }
    for (; i < n_vocab; i++) {
        float y = clamp_logit(logits[i]);
        lane[0] = y > lane[0] ? y : lane[0];
    }
    float m = lane[0];
    for (int j = 1; j < 8; j++) m = lane[j] > m ? lane[j] : m;
    return m;
}

/* Each float operation is assigned to a float, which rounds it to binary32 even where the FPU
 * keeps excess precision (C11 5.2.4.2.2; x87): the result is the same on every machine. */
static uint32_t weight(const tokm_rows *rows, float max_logit, float logit)
{
    float gap = max_logit - clamp_logit(logit);
    float t = gap * LOG2E_1024;
    t = t < (float)EXP_STEPS ? t : (float)EXP_STEPS;
    return rows->weights[(int32_t)t];
}

/* Sum of the weights of logits[lo..hi). */
static uint64_t weight_sum(const tokm_rows *rows, float max_logit, const float *logits, int32_t lo, int32_t hi)
{
    uint64_t lane[4] = {0, 0, 0, 0};
    int32_t i = lo;
    for (; i + 4 <= hi; i += 4)
        for (int j = 0; j < 4; j++) lane[j] += weight(rows, max_logit, logits[i + j]);
    for (; i < hi; i++) lane[0] += weight(rows, max_logit, logits[i]);
    return lane[0] + lane[1] + lane[2] + lane[3];
}

/* floor(c * scale / 2^32) without 128-bit types; c < 2^48, scale < 2^34. */
static uint64_t scaled(uint64_t c, uint64_t scale)
{
    uint64_t c_hi = c >> 32, c_lo = c & 0xffffffffu, s_hi = scale >> 32, s_lo = scale & 0xffffffffu;
    return c_hi * scale + c_lo * s_hi + ((c_lo * s_lo) >> 32);
}

/* total >= 2^30: the top token always weighs 2^30. */
static void row_set_total(row_math *rm, uint64_t total, int32_t n_vocab)
{
    rm->scale = ((uint64_t)(SCALE - (uint32_t)n_vocab) << 32) / total;
}

static uint32_t row_start(const row_math *rm, uint64_t cum, int32_t i, int32_t n_vocab)
{
    return i >= n_vocab ? SCALE : (uint32_t)scaled(cum, rm->scale) + (uint32_t)i;
}

int tokm_row_freqs(const tokm_rows *rows, const float *logits, uint32_t *freq)
{
    if (!rows || !logits || !freq) return SKV_ERR_ARGUMENT;
    int32_t n_vocab = rows->n_vocab;
    row_math rm = {row_max(logits, n_vocab), 0};
    row_set_total(&rm, weight_sum(rows, rm.max_logit, logits, 0, n_vocab), n_vocab);
    uint64_t cum = 0;
    uint32_t start = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        cum += weight(rows, rm.max_logit, logits[i]);
        uint32_t next = row_start(&rm, cum, i + 1, n_vocab);
        freq[i] = next - start;
        start = next;
    }
    return 0;
}

int tokm_token_range(const tokm_rows *rows, const float *logits, int32_t token,
                     uint32_t *start, uint32_t *freq)
{
    if (!rows || !logits || !start || !freq || token < 0 || token >= rows->n_vocab) return SKV_ERR_ARGUMENT;
    int32_t n_vocab = rows->n_vocab;
    row_math rm = {row_max(logits, n_vocab), 0};
    uint64_t before = weight_sum(rows, rm.max_logit, logits, 0, token);
    uint64_t own = weight(rows, rm.max_logit, logits[token]);
    uint64_t after = weight_sum(rows, rm.max_logit, logits, token + 1, n_vocab);
    row_set_total(&rm, before + own + after, n_vocab);
    uint32_t lo = row_start(&rm, before, token, n_vocab);
    *start = lo;
    *freq = row_start(&rm, before + own, token + 1, n_vocab) - lo;
    return 0;
}

/* ---------------- rANS (rans.h: 64-bit state, 32-bit words, little-endian) ---------------- */

/* Symbols are pushed last to first; the stream grows downwards from the end of out. */
int64_t tokm_encode_ranges(const uint32_t *starts, const uint32_t *freqs, int64_t n,
                           uint8_t *out, int64_t out_cap)
{
    if (n < 0 || !out || out_cap < 0 || (uint64_t)out_cap < 4 * rans64_enc_bound_words((size_t)n, 1))
        return n < 0 || !out ? SKV_ERR_ARGUMENT : SKV_ERR_CAPACITY;
    Rans64State x;
    rans64_enc_init(&x);
    uint8_t *ptr = out + out_cap;
    for (int64_t i = n - 1; i >= 0; i--) {
        if (freqs[i] == 0 || (uint64_t)starts[i] + freqs[i] > SCALE) return SKV_ERR_ARGUMENT;
        rans64_enc_put(&x, &ptr, starts[i], freqs[i], TOKM_SCALE_BITS);
    }
    rans64_enc_flush(&x, &ptr);
    int64_t written = (out + out_cap) - ptr;
    memmove(out, ptr, (size_t)written);
    return written;
}

struct tokm_decoder {
    tokm_rows *rows;
    const uint8_t *ptr, *end;
    Rans64State x;
    int failed;
    uint64_t *block_cum;                 /* cumulative weights before each block of the row */
};

tokm_decoder *tokm_decoder_new(const uint8_t *in, int64_t in_len, int32_t n_vocab)
{
    if (!in || in_len < 8 || n_vocab < 1 || n_vocab > (1 << 24)) return NULL;
    tokm_decoder *dec = calloc(1, sizeof *dec);
    if (!dec) return NULL;
    dec->rows = tokm_rows_new(n_vocab);
    dec->block_cum = malloc(((size_t)n_vocab / BLOCK + 2) * sizeof(uint64_t));
    if (!dec->rows || !dec->block_cum) {
        tokm_decoder_free(dec);
        return NULL;
    }
    dec->ptr = in;
    dec->end = in + in_len;
    dec->failed = rans64_dec_init(&dec->x, &dec->ptr, dec->end) != 0;
    return dec;
}

void tokm_decoder_free(tokm_decoder *dec)
{
    if (!dec) return;
    tokm_rows_free(dec->rows);
    free(dec->block_cum);
    free(dec);
}

/* The token whose [start, start + freq) holds slot: the block first, then within it.
 * Sets *start and *freq. */
static int32_t find_token(const tokm_decoder *dec, const row_math *rm, const float *logits,
                          uint32_t slot, uint32_t *start, uint32_t *freq)
{
    int32_t n_vocab = dec->rows->n_vocab, lo = 0, hi = (n_vocab + BLOCK - 1) / BLOCK;
    while (hi - lo > 1) {                /* start of block lo <= slot < start of block hi */
        int32_t mid = lo + (hi - lo) / 2;
        if (row_start(rm, dec->block_cum[mid], mid * BLOCK, n_vocab) <= slot) lo = mid;
        else hi = mid;
    }
    uint64_t cum = dec->block_cum[lo];
    uint32_t here = row_start(rm, cum, lo * BLOCK, n_vocab);
    int32_t i = lo * BLOCK, end = i + BLOCK < n_vocab ? i + BLOCK : n_vocab;
    for (; i < end; i++) {
        cum += weight(dec->rows, rm->max_logit, logits[i]);
        uint32_t next = row_start(rm, cum, i + 1, n_vocab);
        if (next > slot || i + 1 == end) {
            *start = here;
            *freq = next - here;
            break;
        }
        here = next;
    }
    return i;
}

int32_t tokm_decoder_next(tokm_decoder *dec, const float *logits)
{
    if (!dec || !logits) return SKV_ERR_ARGUMENT;
    if (dec->failed) return SKV_ERR_CORRUPT;
    int32_t n_vocab = dec->rows->n_vocab, n_blocks = (n_vocab + BLOCK - 1) / BLOCK;
    row_math rm = {row_max(logits, n_vocab), 0};
    uint64_t total = 0;
    for (int32_t b = 0; b < n_blocks; b++) {
        dec->block_cum[b] = total;
        int32_t end = (b + 1) * BLOCK < n_vocab ? (b + 1) * BLOCK : n_vocab;
        total += weight_sum(dec->rows, rm.max_logit, logits, b * BLOCK, end);
    }
    row_set_total(&rm, total, n_vocab);
    uint32_t slot = rans64_dec_get(&dec->x, TOKM_SCALE_BITS), start = 0, freq = 1;
    int32_t token = find_token(dec, &rm, logits, slot, &start, &freq);
    rans64_dec_advance(&dec->x, &dec->ptr, dec->end, start, freq, TOKM_SCALE_BITS, &dec->failed);
    return dec->failed ? SKV_ERR_CORRUPT : token;
}

int tokm_decoder_finish(const tokm_decoder *dec)
{
    if (!dec) return SKV_ERR_ARGUMENT;
    return dec->failed || !rans64_dec_finished(&dec->x) || dec->ptr != dec->end ? SKV_ERR_CORRUPT : 0;
}
