/*
 * rans.h -- generic 64-bit-state rANS entropy coder, header-only.
 *
 * The construction follows Fabian Giesen's ryg_rans "rans64.h" (public domain): a 64-bit state
 * x kept in [RANS64_L, 2^63) with RANS64_L = 2^31, renormalised 32 bits at a time. One coding
 * step codes a symbol of probability freq / 2^scale_bits whose cumulative start is `start`:
 *
 *     encode:  x' = (x / freq) << scale_bits  +  x % freq  +  start
 *     decode:  slot = x & (2^scale_bits - 1);  find the symbol with start <= slot < start + freq;
 *              x = freq * (x >> scale_bits) + slot - start
 *
 * scale_bits may be anything from 1 to 31 per call (one 32-bit word is enough to renormalise
 * after any step), so callers can fold raw bits into a step: a symbol coded at scale P followed
 * by r uniform raw bits is one step at scale P + r with start' = (raw << P) + start.
 *
 * Interleaving: any number of states may share one word buffer. The encoder codes the symbols
 * in REVERSE order of decoding, each with the state the decoder will use for it, writing words
 * backwards (towards lower addresses); then flushes the states in reverse order
 * (state n-1 first ... state 0 last), so the decoder initialises state 0, 1, ... in order and
 * reads forward. Words are stored little-endian whatever the host.
 *
 * Safety: the encoder writes at most one word per step plus two per flushed state: size the
 * buffer for that (rans64_enc_bound_words). The decoder never reads past `end`; a read it would
 * need beyond `end` sets *err and feeds zeros, so corrupt input cannot make it read out of
 * bounds. After decoding every symbol, rans64_dec_finished() tells whether a state returned to
 * its initial value (a cheap integrity check: corrupt streams almost never pass it).
 */
#ifndef SEQKV_RANS_H
#define SEQKV_RANS_H

#include <stddef.h>
#include <stdint.h>

#define RANS64_L (1ull << 31)

typedef uint64_t Rans64State;

static inline void rans64_store_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline uint32_t rans64_load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Words an encoder may write for n_steps coding steps and n_states flushed states. */
static inline size_t rans64_enc_bound_words(size_t n_steps, size_t n_states)
{
    return n_steps + 2 * n_states;
}

static inline void rans64_enc_init(Rans64State *r)
{
    *r = RANS64_L;
}

/* Code one symbol (start, freq) at precision scale_bits: 1 <= freq, start + freq <= 2^scale_bits.
 * *pptr points at the first written byte and moves down by 4 when a word is emitted. */
static inline void rans64_enc_put(Rans64State *r, uint8_t **pptr, uint32_t start, uint32_t freq,
                                  uint32_t scale_bits)
{
    uint64_t x = *r;
    uint64_t x_max = ((RANS64_L >> scale_bits) << 32) * freq;
    if (x >= x_max) {
        *pptr -= 4;
        rans64_store_le32(*pptr, (uint32_t)x);
        x >>= 32;
    }
    *r = ((x / freq) << scale_bits) + (x % freq) + start;
}

/* Code n_bits (1..31) uniform raw bits: a step with freq 1, without the division. */
static inline void rans64_enc_put_bits(Rans64State *r, uint8_t **pptr, uint32_t bits, uint32_t n_bits)
{
    uint64_t x = *r;
    uint64_t x_max = (RANS64_L >> n_bits) << 32;
    if (x >= x_max) {
        *pptr -= 4;
        rans64_store_le32(*pptr, (uint32_t)x);
        x >>= 32;
    }
    *r = (x << n_bits) | bits;
}

/* Write the final state (two words). Flush the last-decoded state first. */
static inline void rans64_enc_flush(Rans64State *r, uint8_t **pptr)
{
    *pptr -= 8;
    rans64_store_le32(*pptr, (uint32_t)*r);
    rans64_store_le32(*pptr + 4, (uint32_t)(*r >> 32));
}

/* Read an initial state; returns 0 on success, -1 when fewer than 8 bytes remain or the state
 * is out of range (corrupt stream). */
static inline int rans64_dec_init(Rans64State *r, const uint8_t **pptr, const uint8_t *end)
{
    if (end - *pptr < 8)
        return -1;
    uint64_t x = rans64_load_le32(*pptr) | ((uint64_t)rans64_load_le32(*pptr + 4) << 32);
    *pptr += 8;
    if (x < RANS64_L || (x >> 63))
        return -1;
    *r = x;
    return 0;
}

/* The slot of the next symbol: a value in [0, 2^scale_bits). */
static inline uint32_t rans64_dec_get(const Rans64State *r, uint32_t scale_bits)
{
    return (uint32_t)(*r & ((1ull << scale_bits) - 1));
}

/* Bring x back into [RANS64_L, 2^63) reading at most one word; never reads at or past `end`. */
static inline void rans64_dec_renorm(Rans64State *r, const uint8_t **pptr, const uint8_t *end, int *err)
{
    uint64_t x = *r;
    int need = x < RANS64_L;
    if (end - *pptr >= 4) { /* branchless in the common case: the stream has words left */
        uint64_t refilled = (x << 32) | rans64_load_le32(*pptr);
        x = need ? refilled : x;
        *pptr += need ? 4 : 0;
    } else if (need) {
        *err = 1;
        x = RANS64_L; /* keep decoding harmlessly; the caller reports the error */
    }
    *r = x;
}

/* Remove the symbol (start, freq) that rans64_dec_get identified. */
static inline void rans64_dec_advance(Rans64State *r, const uint8_t **pptr, const uint8_t *end,
                                      uint32_t start, uint32_t freq, uint32_t scale_bits, int *err)
{
    uint64_t mask = (1ull << scale_bits) - 1;
    *r = freq * (*r >> scale_bits) + (*r & mask) - start;
    rans64_dec_renorm(r, pptr, end, err);
}

/* Take n_bits (1..31) raw bits coded with rans64_enc_put_bits. */
static inline uint32_t rans64_dec_get_bits(Rans64State *r, const uint8_t **pptr, const uint8_t *end,
                                           uint32_t n_bits, int *err)
{
    uint32_t bits = (uint32_t)(*r & ((1ull << n_bits) - 1));
    *r >>= n_bits;
    rans64_dec_renorm(r, pptr, end, err);
    return bits;
}

/* True when a state ended where the encoder started it. */
static inline int rans64_dec_finished(const Rans64State *r)
{
    return *r == RANS64_L;
}

#endif /* SEQKV_RANS_H */
