/*
 * kvcodec.c -- public API of the kv_lossless codec: stream header, encode, decode.
 *
 * Stream (format version 1, little-endian):
 *   0  "KVL" + version (u8)          16  total stream size (u64)
 *   4  ggml type (u8)                24  checksum of the raw tensor bytes (u32)
 *   5  flags (u8): 1 token-major,    28  e0 (u8): FLOAT fixed-point exponent offset
 *      2 stored raw                  29  3 zero bytes
 *   6  pair offset (u16)
 *   8  n_channels (u32)
 *   12 n_tokens (u32)
 *   32 side information (kvc_plan.c), then the rANS stream: 4 initial states (u64 each),
 *      then 32-bit words; or, when stored, the raw tensor bytes.
 */
#include <stdlib.h>
#include <string.h>

#include "kvc_plan.h"
#include "kvcodec.h"

#define FLAG_TOKEN_MAJOR 1
#define FLAG_STORED 2

typedef struct {
    int type, token_major, stored, pair_offset, e0;
    int64_t n_channels, n_tokens, total;
    uint32_t checksum;
} Header;

static uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static void store64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

/* A fast 32-bit digest of the raw bytes: four xxh64-style lanes over 8-byte words. */
static uint32_t checksum(const uint8_t *p, int64_t n)
{
    const uint64_t p1 = 0x9E3779B185EBCA87ull, p2 = 0xC2B2AE3D27D4EB4Full;
    uint64_t h[4] = {p1 + p2, p2, 0, 0 - p1};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int l = 0; l < 4; l++)
            h[l] = rotl64(h[l] + load64(p + i + 8 * l) * p2, 31) * p1;
    uint64_t acc = (uint64_t)n * p1 + rotl64(h[0], 1) + rotl64(h[1], 7) + rotl64(h[2], 12) + rotl64(h[3], 18);
    for (; i < n; i++)
        acc = rotl64(acc ^ (p[i] * p2), 23) * p1;
    acc ^= acc >> 33;
    acc *= p2;
    acc ^= acc >> 29;
    return (uint32_t)(acc >> 32);
}

int64_t kvc_row_bytes(int ggml_type, int64_t n_channels)
{
    if (n_channels < 0 || n_channels > 0x7fffffff)
        return SKV_ERR_ARGUMENT;
    switch (ggml_type) {
    case KVC_TYPE_F32: return n_channels * 4;
    case KVC_TYPE_F16:
    case KVC_TYPE_BF16: return n_channels * 2;
    case KVC_TYPE_Q8_0: return n_channels % 32 ? SKV_ERR_ARGUMENT : n_channels / 32 * 34;
    case KVC_TYPE_Q4_0: return n_channels % 32 ? SKV_ERR_ARGUMENT : n_channels / 32 * 18;
    default: return SKV_ERR_UNSUPPORTED;
    }
}

/* n_tokens of a tensor of len bytes, or a SKV_ERR_* code. */
static int64_t tokens_of(int ggml_type, int token_major, int64_t n_channels, int64_t len)
{
    int64_t row = kvc_row_bytes(ggml_type, n_channels);
    if (row < 0)
        return row;
    if ((ggml_type == KVC_TYPE_Q8_0 || ggml_type == KVC_TYPE_Q4_0) && !token_major)
        return SKV_ERR_UNSUPPORTED;
    if (len < 0 || (row == 0 && len != 0) || (row && len % row))
        return SKV_ERR_ARGUMENT;
    int64_t n = row ? len / row : 0;
    return n > 0xffffffffll ? SKV_ERR_ARGUMENT : n;
}

int64_t kvc_encode_bound(int ggml_type, int64_t n_channels, int64_t src_len)
{
    int64_t row = kvc_row_bytes(ggml_type, n_channels);
    if (row < 0)
        return row;
    int64_t n_tokens = row ? src_len / row : 0;
    int64_t n_elems = n_tokens * (n_channels + n_channels / 32) * (ggml_type == KVC_TYPE_F32 ? 2 : 1);
    int64_t coded = KVC_HEADER_SIZE + 8 * (n_channels + 1) + 4 * (n_elems + 2 * KVC_N_STATES);
    int64_t stored = KVC_HEADER_SIZE + src_len;
    return coded > stored ? coded : stored;
}

static void write_header(uint8_t *dst, const Header *h)
{
    memset(dst, 0, KVC_HEADER_SIZE);
    memcpy(dst, "KVL", 3);
    dst[3] = KVC_FORMAT_VERSION;
    dst[4] = (uint8_t)h->type;
    dst[5] = (uint8_t)((h->token_major ? FLAG_TOKEN_MAJOR : 0) | (h->stored ? FLAG_STORED : 0));
    dst[6] = (uint8_t)h->pair_offset;
    dst[7] = (uint8_t)(h->pair_offset >> 8);
    store64(dst + 8, (uint64_t)h->n_channels | ((uint64_t)h->n_tokens << 32));
    store64(dst + 16, (uint64_t)h->total);
    store64(dst + 24, h->checksum | ((uint64_t)h->e0 << 32));
}

static int read_header(const uint8_t *src, int64_t src_len, Header *h)
{
    if (src_len < KVC_HEADER_SIZE || memcmp(src, "KVL", 3) || src[3] != KVC_FORMAT_VERSION)
        return SKV_ERR_CORRUPT;
    if ((src[5] & ~(FLAG_TOKEN_MAJOR | FLAG_STORED)) || src[29] || src[30] || src[31])
        return SKV_ERR_CORRUPT;
    h->type = src[4];
    h->token_major = src[5] & FLAG_TOKEN_MAJOR;
    h->stored = (src[5] & FLAG_STORED) != 0;
    h->pair_offset = (int)(src[6] | (src[7] << 8));
    uint64_t shape = load64(src + 8);
    h->n_channels = (int64_t)(shape & 0xffffffffu);
    h->n_tokens = (int64_t)(shape >> 32);
    uint64_t total = load64(src + 16);
    h->checksum = (uint32_t)load64(src + 24);
    h->e0 = src[28];
    if (total < KVC_HEADER_SIZE || total > (uint64_t)src_len)
        return SKV_ERR_CORRUPT;
    h->total = (int64_t)total;
    return SKV_OK;
}

int kvc_stream_info(const uint8_t *src, int64_t src_len, int *ggml_type, int *token_major,
                    int64_t *n_channels, int64_t *n_tokens)
{
    Header h;
    int rc = read_header(src, src_len, &h);
    if (rc != SKV_OK)
        return rc;
    *ggml_type = h.type;
    *token_major = h.token_major;
    *n_channels = h.n_channels;
    *n_tokens = h.n_tokens;
    return SKV_OK;
}

int64_t kvc_stream_size(const uint8_t *src, int64_t src_len)
{
    if (src_len < KVC_HEADER_SIZE || memcmp(src, "KVL", 3) || src[3] != KVC_FORMAT_VERSION)
        return SKV_ERR_CORRUPT;
    uint64_t total = load64(src + 16);
    if (total < KVC_HEADER_SIZE || total > (uint64_t)src_len)
        return SKV_ERR_CORRUPT;
    return (int64_t)total;
}

/* e0 for FLOAT sections: keep the largest finite exponent within the fixed-point range. */
static int choose_e0(KvcPlan *plan, int ggml_type)
{
    if (ggml_type != KVC_TYPE_BF16 && ggml_type != KVC_TYPE_F32)
        return 0;
    int e = kvc_max_exponent(&plan->sec[0]);
    int e0 = e - 1 - (43 - plan->fmt[0].mant_bits) + 2;
    return e0 > 0 ? e0 : 0;
}

static int64_t store_raw(const uint8_t *src, int64_t src_len, Header *h, uint8_t *dst, int64_t dst_cap)
{
    if (dst_cap < KVC_HEADER_SIZE + src_len)
        return SKV_ERR_CAPACITY;
    h->stored = 1;
    h->pair_offset = 0;
    h->e0 = 0;
    h->total = KVC_HEADER_SIZE + src_len;
    write_header(dst, h);
    if (src_len)
        memcpy(dst + KVC_HEADER_SIZE, src, (size_t)src_len);
    return h->total;
}

kvc_workspace *kvc_workspace_new(void)
{
    return calloc(1, sizeof(kvc_workspace));
}

void kvc_workspace_free(kvc_workspace *ws)
{
    if (!ws)
        return;
    for (int i = 0; i < KVC_WS_SETS; i++)
        if (ws->sets[i].mem)
            kvc_ctxset_free(&ws->sets[i]);
    free(ws->steps);
    free(ws->buf);
    free(ws->vals);
    free(ws);
}

/* Scratch of at least n bytes at *p (capacity *cap), kept in the workspace when there is one. */
static void *scratch(void **p, size_t *cap, size_t n, int keep)
{
    if (keep && *cap >= n)
        return *p;
    if (keep)
        free(*p);
    *p = malloc(n ? n : 1);
    *cap = *p ? n : 0;
    return *p;
}

/* Model and rANS-code every section; returns the coded stream size or an error. */
static int64_t code_sections(KvcPlan *plan, uint8_t *dst, int64_t dst_cap, kvc_workspace *ws)
{
    size_t n_steps = 0;
    for (int i = 0; i < plan->n_sec; i++)
        n_steps += kvc_section_steps(&plan->sec[i]);
    size_t n_bytes = 4 * rans64_enc_bound_words(n_steps, KVC_N_STATES);
    void *steps_mem = ws ? ws->steps : NULL, *buf_mem = ws ? ws->buf : NULL;
    size_t steps_cap = ws ? ws->steps_cap : 0, buf_cap = ws ? ws->buf_cap : 0;
    KvcStep *steps = scratch(&steps_mem, &steps_cap, sizeof(KvcStep) * n_steps, ws != NULL);
    uint8_t *buf = scratch(&buf_mem, &buf_cap, n_bytes, ws != NULL);
    int64_t size = SKV_ERR_MEMORY;
    if (steps && buf && kvc_plan_contexts(plan, ws) == SKV_OK) {
        size_t n = 0;
        int64_t added = 0;
        for (int i = 0; i < plan->n_sec && added >= 0; i++) {
            added = kvc_model_section(&plan->sec[i], steps + n);
            n += added >= 0 ? (size_t)added : 0;
        }
        uint8_t *p = buf + n_bytes;
        if (added >= 0) {
            kvc_encode_steps(steps, n, &p);
            size = (int64_t)(buf + n_bytes - p);
            if (size <= dst_cap)
                memcpy(dst, p, (size_t)size);
            else
                size = SKV_ERR_CAPACITY;
        }
    }
    if (ws) {
        ws->steps = steps_mem;
        ws->steps_cap = steps_cap;
        ws->buf = buf_mem;
        ws->buf_cap = buf_cap;
    } else {
        free(steps_mem);
        free(buf_mem);
    }
    return size;
}

int64_t kvc_encode(const uint8_t *src, int64_t src_len, int ggml_type, int token_major,
                   int64_t n_channels, int pair_offset, uint8_t *dst, int64_t dst_cap, kvc_workspace *ws)
{
    int64_t n_tokens = tokens_of(ggml_type, token_major, n_channels, src_len);
    if (n_tokens < 0)
        return n_tokens;
    if (dst_cap < kvc_encode_bound(ggml_type, n_channels, src_len))
        return SKV_ERR_CAPACITY;
    Header h = {ggml_type, token_major != 0, 0, 0, 0, n_channels, n_tokens, 0, checksum(src, src_len)};
    if (n_tokens == 0 || n_channels == 0)
        return store_raw(src, src_len, &h, dst, dst_cap);
    KvcPlan plan;
    int rc = kvc_plan_init(&plan, ggml_type, token_major, n_channels, n_tokens, (uint8_t *)src);
    if (rc != SKV_OK)
        return rc;
    h.e0 = choose_e0(&plan, ggml_type);
    for (int i = 0; i < plan.n_sec; i++) {
        plan.fmt[i].e0 = plan.fmt[i].kind == KVC_KIND_FLOAT && i == 0 ? h.e0 : 0;
        /* reused scratch: a fresh allocation per call costs page faults (glibc mmaps or trims) */
        float *vals = NULL;
        if (ws) {
            void *mem = ws->vals;
            vals = scratch(&mem, &ws->vals_cap, sizeof(float) * kvc_estimate_floats(&plan.sec[i]), 1);
            ws->vals = mem;
        }
        int offset = kvc_estimate_section(&plan.sec[i], i + 1 == plan.n_sec ? pair_offset : 0, vals);
        if (offset < 0) {
            kvc_plan_free(&plan);
            return SKV_ERR_MEMORY;
        }
        if (i + 1 == plan.n_sec)
            h.pair_offset = offset;
    }
    int64_t side = kvc_side_size(&plan);
    if (KVC_HEADER_SIZE + side >= dst_cap) {
        kvc_plan_free(&plan);
        return store_raw(src, src_len, &h, dst, dst_cap);
    }
    kvc_side_write(&plan, dst + KVC_HEADER_SIZE);
    int64_t coded = code_sections(&plan, dst + KVC_HEADER_SIZE + side, dst_cap - KVC_HEADER_SIZE - side, ws);
    kvc_plan_free(&plan);
    if (coded == SKV_ERR_MEMORY)
        return coded;
    if (coded < 0 || KVC_HEADER_SIZE + side + coded >= KVC_HEADER_SIZE + src_len)
        return store_raw(src, src_len, &h, dst, dst_cap);
    h.total = KVC_HEADER_SIZE + side + coded;
    write_header(dst, &h);
    return h.total;
}

static int check_header(const Header *h, int ggml_type, int token_major, int64_t n_channels, int64_t n_tokens)
{
    if (h->type != ggml_type || h->token_major != (token_major != 0) || h->n_channels != n_channels ||
        h->n_tokens != n_tokens)
        return SKV_ERR_MISMATCH;
    if (h->e0 && (h->stored || (ggml_type != KVC_TYPE_BF16 && ggml_type != KVC_TYPE_F32)))
        return SKV_ERR_CORRUPT;
    if (h->stored && h->total != KVC_HEADER_SIZE + n_tokens * kvc_row_bytes(ggml_type, n_channels))
        return SKV_ERR_CORRUPT;
    return SKV_OK;
}

/* Decode the side information and the rANS stream of a coded (not stored) tensor. */
static int decode_sections(KvcPlan *plan, const Header *h, const uint8_t *src, kvc_workspace *ws)
{
    const uint8_t *end = src + h->total, *p = src + KVC_HEADER_SIZE;
    for (int i = 0; i < plan->n_sec; i++) {
        plan->fmt[i].e0 = plan->fmt[i].kind == KVC_KIND_FLOAT && i == 0 ? h->e0 : 0;
        int offset = i + 1 == plan->n_sec ? h->pair_offset : 0;
        if (offset && (offset >= plan->sec[i].n_channels || plan->sec[i].n_channels % (2 * offset)))
            return SKV_ERR_CORRUPT;
        plan->sec[i].n_lanes = kvc_make_lanes(plan->sec[i].lanes, plan->sec[i].n_channels, offset);
    }
    int64_t side = kvc_side_size(plan);
    if (end - p < side || kvc_side_read(plan, p) != SKV_OK)
        return SKV_ERR_CORRUPT;
    p += side;
    if (kvc_plan_contexts(plan, ws) != SKV_OK)
        return SKV_ERR_MEMORY;
    Rans64State st[KVC_N_STATES];
    for (int i = 0; i < KVC_N_STATES; i++)
        if (rans64_dec_init(&st[i], &p, end))
            return SKV_ERR_CORRUPT;
    for (int i = 0; i < plan->n_sec; i++) {
        int rc = kvc_decode_section(&plan->sec[i], st, &p, end);
        if (rc)
            return rc == -2 ? SKV_ERR_MEMORY : SKV_ERR_CORRUPT;
    }
    for (int i = 0; i < KVC_N_STATES; i++)
        if (!rans64_dec_finished(&st[i]))
            return SKV_ERR_CORRUPT;
    return p == end ? SKV_OK : SKV_ERR_CORRUPT;
}

int kvc_decode(const uint8_t *src, int64_t src_len, int ggml_type, int token_major,
               int64_t n_channels, uint8_t *dst, int64_t dst_len, kvc_workspace *ws)
{
    int64_t n_tokens = tokens_of(ggml_type, token_major, n_channels, dst_len);
    if (n_tokens < 0)
        return (int)n_tokens;
    Header h;
    int rc = read_header(src, src_len, &h);
    if (rc == SKV_OK)
        rc = check_header(&h, ggml_type, token_major, n_channels, n_tokens);
    if (rc != SKV_OK)
        return rc;
    if (h.stored) {
        if (dst_len)
            memcpy(dst, src + KVC_HEADER_SIZE, (size_t)dst_len);
    } else {
        /* per-channel scratch is sized by n_channels: first check the stream can describe that many */
        if (h.total - KVC_HEADER_SIZE < kvc_side_min_size(ggml_type, n_channels))
            return SKV_ERR_CORRUPT;
        KvcPlan plan;
        rc = kvc_plan_init(&plan, ggml_type, token_major, n_channels, n_tokens, dst);
        if (rc == SKV_OK)
            rc = decode_sections(&plan, &h, src, ws);
        kvc_plan_free(&plan);
        if (rc != SKV_OK)
            return rc;
    }
    return checksum(dst, dst_len) == h.checksum ? SKV_OK : SKV_ERR_CORRUPT;
}
