/* Portable token codec: a context model over token ids (tokens_cm_model.c) driving a binary
 * arithmetic coder.  No language model is needed to decode, and all arithmetic is integer.
 *
 * Token t is binarised through v = t + 1: first a flag "first occurrence in this stream?", then
 * the bucket k = bit_length(v) - 1 (a 5-level binary tree; a lower id is a more frequent BPE
 * merge, so the bucket is a frequency class), then the k bits of v below its leading one.
 * The tree is walked among tokens already seen (REP) or among tokens not yet seen (NOVEL):
 * per-node counts of seen tokens exclude the impossible side (such bits cost nothing) and give
 * the mixer a count-based prior.  Every decoded token is a valid id in [0, n_vocab). */
#include <stdlib.h>
#include <string.h>

#include "tokens.h"
#include "tokens_cm.h"

#define TREE_DEPTH 5

typedef struct {
    uint32_t x1, x2, x;
    uint8_t *out;
    const uint8_t *in;
    int64_t pos, len;
    int overrun;
} arith;

typedef struct {
    int64_t size, distinct, occ;
} subtree;

typedef struct {
    tokcm_model *model;
    arith a;
    int32_t n_vocab;
    int max_bucket;
    uint32_t bt_base;              /* node ids: mantissa nodes below, bucket tree from here */
    int64_t bt_size[2 << TREE_DEPTH];
    int32_t *distinct, *occ;       /* per node: distinct seen tokens, occurrences */
    int32_t *leaf_occ;             /* per v = token + 1 */
    int64_t n_seen, n_distinct;
} coder;

/* ---------------- binary arithmetic coder (carry-less, 32-bit) ---------------- */

static int arith_put(arith *a, uint8_t byte)
{
    if (a->pos >= a->len) return SKV_ERR_CAPACITY;
    a->out[a->pos++] = byte;
    return 0;
}

static uint8_t arith_get(arith *a)
{
    if (a->pos >= a->len) {
        a->overrun = 1;
        a->pos++;
        return 0;
    }
    return a->in[a->pos++];
}

/* Codes one bit with P(1) = p16 / 65536; in decode mode (a->in set) returns the decoded bit. */
static int arith_code(arith *a, int p16, int bit)
{
    uint32_t xmid = a->x1 + (uint32_t)(((uint64_t)(a->x2 - a->x1) * (uint32_t)p16) >> 16);
    if (a->in) bit = a->x <= xmid;
    if (bit) a->x2 = xmid;
    else a->x1 = xmid + 1;
    while (((a->x1 ^ a->x2) & 0xff000000u) == 0) {
        if (a->in) {
            a->x = (a->x << 8) | arith_get(a);
        } else if (arith_put(a, (uint8_t)(a->x2 >> 24)) < 0) {
            return SKV_ERR_CAPACITY;
        }
        a->x1 <<= 8;
        a->x2 = (a->x2 << 8) | 255u;
    }
    return bit;
}

static int arith_flush(arith *a)
{
    for (int s = 24; s >= 0; s -= 8)
        if (arith_put(a, (uint8_t)(a->x1 >> s)) < 0) return SKV_ERR_CAPACITY;
    return 0;
}

/* ---------------- subtree statistics ---------------- */

static void coder_free(coder *c)
{
    tokcm_model_free(c->model);
    free(c->distinct);
    free(c->occ);
    free(c->leaf_occ);
}

static int64_t bucket_size(int32_t n_vocab, int k)
{
    int64_t lo = (int64_t)1 << k, hi = ((int64_t)2 << k) - 1;
    if (hi > n_vocab) hi = n_vocab;
    return hi >= lo ? hi - lo + 1 : 0;
}

static int coder_init(coder *c, int64_t n_tokens, int32_t n_vocab)
{
    memset(c, 0, sizeof *c);
    c->n_vocab = n_vocab;
    c->max_bucket = tokcm_bit_length((uint32_t)n_vocab) - 1;
    c->bt_base = (uint32_t)2 << c->max_bucket;
    uint32_t n_nodes = c->bt_base + (2u << TREE_DEPTH) + 1;
    for (int k = 0; k < (1 << TREE_DEPTH); k++) c->bt_size[(1 << TREE_DEPTH) + k] = bucket_size(n_vocab, k);
    for (int node = (1 << TREE_DEPTH) - 1; node >= 1; node--)
        c->bt_size[node] = c->bt_size[2 * node] + c->bt_size[2 * node + 1];
    c->model = tokcm_model_new(n_tokens, n_nodes);
    c->distinct = calloc(n_nodes, sizeof(int32_t));
    c->occ = calloc(n_nodes, sizeof(int32_t));
    c->leaf_occ = calloc((size_t)n_vocab + 1, sizeof(int32_t));
    if (!c->model || !c->distinct || !c->occ || !c->leaf_occ) {
        coder_free(c);
        return SKV_ERR_MEMORY;
    }
    return 0;
}

static subtree bucket_stats(const coder *c, uint32_t node)
{
    subtree s = {c->bt_size[node], c->distinct[c->bt_base + node], c->occ[c->bt_base + node]};
    return s;
}

/* The values of bucket k starting with prefix q (leading one + `consumed` bits). */
static subtree mantissa_stats(const coder *c, int k, uint32_t q, int consumed)
{
    int r = k - consumed;
    if (r == 0) {
        int32_t occ = q <= (uint32_t)c->n_vocab ? c->leaf_occ[q] : 0;
        subtree leaf = {q <= (uint32_t)c->n_vocab, occ > 0, occ};
        return leaf;
    }
    int64_t lo = (int64_t)q << r, hi = ((int64_t)(q + 1) << r) - 1;
    if (hi > c->n_vocab) hi = c->n_vocab;
    uint32_t id = (1u << k) + q - 1;
    subtree s = {hi >= lo ? hi - lo + 1 : 0, c->distinct[id], c->occ[id]};
    return s;
}

static void count_token(coder *c, uint32_t v, int novel)
{
    int k = tokcm_bit_length(v) - 1;
    for (uint32_t node = ((uint32_t)(1 << TREE_DEPTH) + (uint32_t)k); node >= 1; node >>= 1) {
        c->distinct[c->bt_base + node] += novel;
        c->occ[c->bt_base + node]++;
    }
    for (int consumed = 0; consumed < k; consumed++) {
        uint32_t id = (1u << k) + (v >> (k - consumed)) - 1;
        c->distinct[id] += novel;
        c->occ[id]++;
    }
    c->leaf_occ[v]++;
    c->n_seen++;
    c->n_distinct += novel;
}

/* ---------------- binary decisions ---------------- */

static int code_bit(coder *c, const tokcm_decision *d, int bit)
{
    int p16 = tokcm_model_predict(c->model, d);
    bit = arith_code(&c->a, p16, bit);
    if (bit >= 0) tokcm_model_update(c->model, bit);
    return bit;
}

static int ratio16(int64_t ones, int64_t total)
{
    return (int)(((2 * ones + 1) << 16) / (2 * total + 2));
}

/* Chooses a child; a child holding no candidate token is never coded. */
static int code_choice(coder *c, tokcm_decision *d, subtree s0, subtree s1, int bit)
{
    int rep = d->branch == TOKCM_REP;
    int64_t avail0 = rep ? s0.distinct : s0.size - s0.distinct;
    int64_t avail1 = rep ? s1.distinct : s1.size - s1.distinct;
    if (avail0 == 0 || avail1 == 0) {
        int forced = avail0 == 0;
        if (avail0 + avail1 == 0 || (!c->a.in && bit != forced)) return SKV_ERR_ARGUMENT;
        return forced;
    }
    d->prior16 = rep ? ratio16(s1.occ, s0.occ + s1.occ) : ratio16(avail1, avail0 + avail1);
    return code_bit(c, d, bit);
}

static int code_bucket(coder *c, int branch, int bucket, int expected_bucket, int *alive)
{
    uint32_t node = 1;
    for (int depth = 0; depth < TREE_DEPTH; depth++) {
        int shift = TREE_DEPTH - 1 - depth;
        int expected = *alive ? (expected_bucket >> shift) & 1 : -1;
        tokcm_decision d = {branch, c->bt_base + node, depth, expected, 0};
        int bit = code_choice(c, &d, bucket_stats(c, 2 * node), bucket_stats(c, 2 * node + 1),
                              (bucket >> shift) & 1);
        if (bit < 0) return bit;
        if (bit != expected) *alive = 0;
        node = 2 * node + (uint32_t)bit;
    }
    return (int)node - (1 << TREE_DEPTH);
}

static int64_t code_mantissa(coder *c, int branch, int k, uint32_t v, uint32_t expected_v, int alive)
{
    uint32_t q = 1;
    for (int consumed = 0; consumed < k; consumed++) {
        int shift = k - 1 - consumed;
        int expected = alive ? (int)(expected_v >> shift) & 1 : -1;
        int phase = TREE_DEPTH + (consumed < TOKCM_PHASES - TREE_DEPTH ? consumed : TOKCM_PHASES - TREE_DEPTH - 1);
        tokcm_decision d = {branch, (1u << k) + q - 1, phase, expected, 0};
        int bit = code_choice(c, &d, mantissa_stats(c, k, 2 * q, consumed + 1),
                              mantissa_stats(c, k, 2 * q + 1, consumed + 1), (int)(v >> shift) & 1);
        if (bit < 0) return bit;
        if (bit != expected) alive = 0;
        q = 2 * q + (uint32_t)bit;
    }
    return q;
}

static int code_novel_flag(coder *c, int novel, int expected)
{
    if (c->n_distinct == 0) return 1;
    if (c->n_distinct == c->n_vocab) return 0;
    tokcm_decision d = {TOKCM_FLAG, c->bt_base + (2u << TREE_DEPTH), 0, expected, 0};
    d.prior16 = ratio16(c->n_distinct, c->n_seen + c->n_distinct);
    return code_bit(c, &d, novel);
}

/* Codes tokens[i] (encoding) or decodes it into tokens[i]; returns 0 or a SKV_ERR_* code. */
static int code_token(coder *c, int32_t *tokens, int64_t i)
{
    int decoding = c->a.in != NULL;
    int32_t predicted = tokcm_model_begin(c->model, tokens, i);
    uint32_t v = decoding ? 0 : (uint32_t)tokens[i] + 1u, expected_v = (uint32_t)(predicted + 1);
    int novel = code_novel_flag(c, decoding ? 0 : c->leaf_occ[v] == 0, predicted >= 0 ? 0 : -1);
    if (novel < 0) return novel;
    int branch = novel ? TOKCM_NOVEL : TOKCM_REP, alive = !novel && predicted >= 0;
    int expected_bucket = tokcm_bit_length(expected_v) - 1;
    int k = code_bucket(c, branch, decoding ? 0 : tokcm_bit_length(v) - 1, expected_bucket, &alive);
    if (k < 0) return k;
    if (alive && k != expected_bucket) alive = 0;
    int64_t value = code_mantissa(c, branch, k, v, expected_v, alive);
    if (value < 0) return (int)value;
    if (decoding) tokens[i] = (int32_t)(value - 1);
    count_token(c, (uint32_t)value, novel);
    tokcm_model_end(c->model, tokens, i);
    return 0;
}

/* ---------------- API ---------------- */

int64_t tokcm_bound(int64_t n_tokens)
{
    return n_tokens * 5 + 64;
}

static int check_args(int64_t n_tokens, int32_t n_vocab)
{
    return n_tokens < 0 || n_tokens > INT32_MAX || n_vocab < 1 || n_vocab > (1 << 24) ? SKV_ERR_ARGUMENT : 0;
}

int64_t tokcm_encode(const int32_t *tokens, int64_t n_tokens, int32_t n_vocab,
                     uint8_t *out, int64_t out_cap)
{
    if (check_args(n_tokens, n_vocab) < 0 || (!tokens && n_tokens) || !out || out_cap < 0) return SKV_ERR_ARGUMENT;
    for (int64_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= n_vocab) return SKV_ERR_ARGUMENT;
    coder c;
    int rc = coder_init(&c, n_tokens, n_vocab);
    if (rc < 0) return rc;
    arith a = {0, 0xffffffffu, 0, out, NULL, 0, out_cap, 0};
    c.a = a;
    for (int64_t i = 0; i < n_tokens && rc == 0; i++) rc = code_token(&c, (int32_t *)tokens, i);
    if (rc == 0) rc = arith_flush(&c.a);
    coder_free(&c);
    return rc < 0 ? rc : c.a.pos;
}

int64_t tokcm_decode(const uint8_t *in, int64_t in_len, int64_t n_tokens, int32_t n_vocab,
                     int32_t *out)
{
    if (check_args(n_tokens, n_vocab) < 0 || !in || in_len < 0 || (!out && n_tokens)) return SKV_ERR_ARGUMENT;
    coder c;
    int rc = coder_init(&c, n_tokens, n_vocab);
    if (rc < 0) return rc;
    arith a = {0, 0xffffffffu, 0, NULL, in, 0, in_len, 0};
    c.a = a;
    for (int k = 0; k < 4; k++) c.a.x = (c.a.x << 8) | arith_get(&c.a);
    for (int64_t i = 0; i < n_tokens && rc == 0; i++) {
        rc = code_token(&c, out, i);
        if (c.a.overrun) rc = SKV_ERR_CORRUPT;
    }
    if (rc == 0 && c.a.x != c.a.x1) rc = SKV_ERR_CORRUPT;  /* the encoder flushed exactly x1 */
    coder_free(&c);
    if (rc == SKV_ERR_ARGUMENT) rc = SKV_ERR_CORRUPT;
    return rc < 0 ? rc : c.a.pos;
}
