/*
 * rans_lanes_probe.c -- how fast kv_lossless-style static rANS decodes one group at a time (format 1's layout:
 * one stream, four interleaved states) against eight independent group streams decoded in lockstep, eight
 * lanes per AVX-512 register with gathers. Same coder as native/kvc_quad.c's static loop: 64-bit states, 32-bit
 * renormalisation, 20-bit probabilities with 7 raw bits folded in (scale 27), a bucket table and a short search.
 * Synthetic symbols from a discretised Gaussian over 512 bins, one table per channel (as static contexts). It
 * answers whether a kv_lossless stream of independent sub-streams would decode faster with vector gathers
 * (benchmarks/RESULTS.md); it needs a CPU with AVX-512 (F and DQ):
 *   gcc -O3 -march=native -o /tmp/rans_lanes_probe benchmarks/rans_lanes_probe.c -lm && /tmp/rans_lanes_probe
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>

#define A 512
#define PROB_BITS 20
#define RAW_BITS 7
#define SCALE (PROB_BITS + RAW_BITS)
#define BUCKET_BITS 10
#define L (1ull << 31)
#define SYM_SHIFT (PROB_BITS + 1)
#define START(e) ((e) & ((1u << SYM_SHIFT) - 1))
#define LANES 8
#define CH 4

typedef struct { uint32_t freq[A], cum[A + 1]; uint32_t dec[A + 1]; uint16_t bucket[1 << BUCKET_BITS]; } Table;

static void make_table(Table *t, double sigma, double mu)
{
    double p[A], sum = 0;
    for (int s = 0; s < A; s++) { double z = (s - mu) / sigma; p[s] = exp(-0.5 * z * z) + 1e-9; sum += p[s]; }
    uint32_t total = 0;
    for (int s = 0; s < A; s++) { t->freq[s] = 1 + (uint32_t)(p[s] / sum * ((1u << PROB_BITS) - 2 * A)); total += t->freq[s]; }
    int big = (int)mu; t->freq[big] += (1u << PROB_BITS) - total;
    t->cum[0] = 0;
    for (int s = 0; s < A; s++) t->cum[s + 1] = t->cum[s] + t->freq[s];
    for (int s = 0; s <= A; s++) t->dec[s] = t->cum[s] | (uint32_t)(s < A ? s : 0) << SYM_SHIFT;
    int r = 0;
    for (int b = 0; b < (1 << BUCKET_BITS); b++) {
        uint32_t lo = (uint32_t)b << (PROB_BITS - BUCKET_BITS);
        while (t->cum[r + 1] <= lo) r++;
        t->bucket[b] = (uint16_t)r;
    }
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static int sample(const Table *t)
{
    uint32_t u = (uint32_t)(next() & ((1u << PROB_BITS) - 1));
    int lo = 0, hi = A;
    while (hi - lo > 1) { int m = (lo + hi) / 2; if (t->cum[m] <= u) lo = m; else hi = m; }
    return lo;
}

/* one group's stream: n tokens x CH symbols, state j codes channel j; returns the start of its bytes */
static uint8_t *encode_group(const Table *tab, const uint16_t *vals, int n, uint8_t *end)
{
    uint64_t x[CH];
    for (int j = 0; j < CH; j++) x[j] = L;
    uint8_t *p = end;
    for (int i = n * CH; i-- > 0;) {
        int j = i % CH;
        uint32_t sym = vals[i] >> RAW_BITS, raw = vals[i] & 127, freq = tab[j].freq[sym];
        uint32_t start = (raw << PROB_BITS) + tab[j].cum[sym];
        uint64_t xm = ((L >> SCALE) << 32) * freq;
        if (x[j] >= xm) { p -= 4; memcpy(p, &x[j], 4); x[j] >>= 32; }
        x[j] = ((x[j] / freq) << SCALE) + (x[j] % freq) + start;
    }
    for (int j = CH; j-- > 0;) { p -= 8; memcpy(p, &x[j], 8); }
    return p;
}

static void decode_group(const Table *tab, const uint8_t *p, int n, uint16_t *out)
{
    uint64_t x[CH];
    for (int j = 0; j < CH; j++) { memcpy(&x[j], p, 8); p += 8; }
    for (int t = 0; t < n; t++)
        for (int j = 0; j < CH; j++) {
            uint64_t r = x[j];
            uint32_t s = (uint32_t)r & ((1u << PROB_BITS) - 1), raw = (uint32_t)(r >> PROB_BITS) & 127;
            const uint32_t *e = tab[j].dec + tab[j].bucket[s >> (PROB_BITS - BUCKET_BITS)];
            while (START(e[1]) <= s) e++;
            uint32_t start = START(e[0]);
            r = (uint64_t)(START(e[1]) - start) * (r >> SCALE) + (s - start);
            uint64_t need = r < L;
            uint32_t w; memcpy(&w, p, 4);
            x[j] = (r << (need * 32)) | (w & (0 - need));
            p += need * 4;
            out[t * CH + j] = (uint16_t)((e[0] >> SYM_SHIFT) << RAW_BITS | raw);
        }
}

/* LANES groups in lockstep: lane g decodes group g's stream; out[(t * CH + j) * LANES + g] */
static void decode_lanes(const Table *tabs, uint8_t *const *starts, int n, uint16_t *out)
{
    __m512i x[CH], ptr, dec_base[CH], bkt_base[CH];
    int64_t dptr[LANES];
    for (int j = 0; j < CH; j++) {
        int64_t xs[LANES], db[LANES], bb[LANES];
        for (int g = 0; g < LANES; g++) {
            memcpy(&xs[g], starts[g] + 8 * j, 8);
            db[g] = (int64_t)(intptr_t)tabs[g * CH + j].dec;
            bb[g] = (int64_t)(intptr_t)tabs[g * CH + j].bucket;
        }
        x[j] = _mm512_loadu_si512(xs);
        dec_base[j] = _mm512_loadu_si512(db);
        bkt_base[j] = _mm512_loadu_si512(bb);
    }
    for (int g = 0; g < LANES; g++) dptr[g] = (int64_t)(intptr_t)(starts[g] + 8 * CH);
    ptr = _mm512_loadu_si512(dptr);
    const __m512i pmask = _mm512_set1_epi64((1 << PROB_BITS) - 1), smask = _mm512_set1_epi64((1u << SYM_SHIFT) - 1);
    const __m512i rmask = _mm512_set1_epi64(127), low = _mm512_set1_epi64(L), ffff = _mm512_set1_epi64(0xffff);
    const __m512i four = _mm512_set1_epi64(4), m32 = _mm512_set1_epi64(0xffffffffll);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < CH; j++) {
            __m512i r = x[j];
            __m512i s = _mm512_and_si512(r, pmask);
            __m512i raw = _mm512_and_si512(_mm512_srli_epi64(r, PROB_BITS), rmask);
            __m512i baddr = _mm512_add_epi64(bkt_base[j], _mm512_slli_epi64(_mm512_srli_epi64(s, PROB_BITS - BUCKET_BITS), 1));
            __m512i rank = _mm512_and_si512(_mm512_i64gather_epi64(baddr, NULL, 1), ffff);
            __m512i eaddr = _mm512_add_epi64(dec_base[j], _mm512_slli_epi64(rank, 2));
            __m512i e = _mm512_i64gather_epi64(eaddr, NULL, 1); /* dec[r] | dec[r + 1] << 32 */
            __mmask8 more = _mm512_cmple_epu64_mask(_mm512_and_si512(_mm512_srli_epi64(e, 32), smask), s);
            while (more) {
                eaddr = _mm512_mask_add_epi64(eaddr, more, eaddr, four);
                e = _mm512_mask_i64gather_epi64(e, more, eaddr, NULL, 1);
                more &= _mm512_cmple_epu64_mask(_mm512_and_si512(_mm512_srli_epi64(e, 32), smask), s);
            }
            __m512i start = _mm512_and_si512(e, smask);
            __m512i freq = _mm512_sub_epi64(_mm512_and_si512(_mm512_srli_epi64(e, 32), smask), start);
            r = _mm512_add_epi64(_mm512_mullo_epi64(freq, _mm512_srli_epi64(r, SCALE)), _mm512_sub_epi64(s, start));
            __mmask8 need = _mm512_cmplt_epu64_mask(r, low);
            __m512i w = _mm512_and_si512(_mm512_mask_i64gather_epi64(_mm512_setzero_si512(), need, ptr, NULL, 1), m32);
            x[j] = _mm512_mask_or_epi64(r, need, _mm512_slli_epi64(r, 32), w);
            ptr = _mm512_mask_add_epi64(ptr, need, ptr, four);
            __m512i sym = _mm512_srli_epi64(_mm512_and_si512(e, m32), SYM_SHIFT);
            __m512i v = _mm512_or_si512(_mm512_slli_epi64(sym, RAW_BITS), raw);
            _mm_storeu_si128((__m128i *)(out + (size_t)(t * CH + j) * LANES), _mm512_cvtepi64_epi16(v));
        }
}

static double now(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + ts.tv_nsec * 1e-9; }

int main(void)
{
    const int n = 2000, reps = 200;
    Table *tabs = malloc(sizeof(Table) * LANES * CH);
    uint16_t *vals = malloc(sizeof(uint16_t) * LANES * n * CH), *a = malloc(sizeof(uint16_t) * LANES * n * CH);
    uint16_t *b = malloc(sizeof(uint16_t) * LANES * n * CH);
    size_t cap = (size_t)n * CH * 8 + 64;
    uint8_t *bufs = malloc(cap * LANES), *starts[LANES];
    for (int g = 0; g < LANES * CH; g++) make_table(&tabs[g], 6.0 + (g % 7) * 3.0, 200.0 + (g % 5) * 20.0);
    for (int g = 0; g < LANES; g++) {
        for (int i = 0; i < n * CH; i++)
            vals[(size_t)g * n * CH + i] = (uint16_t)(sample(&tabs[g * CH + i % CH]) << RAW_BITS | (next() & 127));
        starts[g] = encode_group(&tabs[g * CH], vals + (size_t)g * n * CH, n, bufs + cap * (g + 1));
    }
    size_t coded = 0;
    for (int g = 0; g < LANES; g++) coded += (size_t)(bufs + cap * (g + 1) - starts[g]);
    double best_s = 1e9, best_v = 1e9;
    for (int k = 0; k < reps; k++) {
        double t0 = now();
        for (int g = 0; g < LANES; g++) decode_group(&tabs[g * CH], starts[g], n, a + (size_t)g * n * CH);
        double t1 = now();
        decode_lanes(tabs, starts, n, b);
        double t2 = now();
        if (t1 - t0 < best_s) best_s = t1 - t0;
        if (t2 - t1 < best_v) best_v = t2 - t1;
    }
    size_t bad = 0;
    for (int g = 0; g < LANES; g++)
        for (int i = 0; i < n * CH; i++) {
            bad += a[(size_t)g * n * CH + i] != vals[(size_t)g * n * CH + i];
            bad += b[(size_t)i * LANES + g] != vals[(size_t)g * n * CH + i];
        }
    double values = (double)LANES * n * CH;
    printf("%d groups x %d tokens x %d channels, %.2f bits per value coded; mismatches %zu\n", LANES, n, CH,
           coded * 8.0 / values, bad);
    printf("one group at a time (format 1): %.2f ns per value, %.0f MB/s of f16\n", best_s / values * 1e9,
           values * 2 / best_s / 1e6);
    printf("8 groups in lockstep (AVX-512): %.2f ns per value, %.0f MB/s of f16 (%.2fx)\n", best_v / values * 1e9,
           values * 2 / best_v / 1e6, best_s / best_v);
    return bad != 0;
}
