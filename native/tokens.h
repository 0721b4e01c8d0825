/* Token codecs: a portable context-mixing coder over token ids (tokens_cm*.c) and model-coded
 * tokens, rANS (rans.h) with integer frequencies derived from logits rows (tokens_model.c).
 *
 * Every function returns a negative SKV_ERR_* code on failure.  All modelling and coding is
 * integer arithmetic, so any build on any machine produces and reads the same bytes; the only
 * floating-point steps are one IEEE subtract and one multiply per logit, assigned to float
 * (correctly rounded everywhere, nothing to contract into an FMA, no libm).
 * Declared to Python (@cffi): native/build_native.py reads its prototypes and constants.
 */
#ifndef SEQKV_TOKENS_H
#define SEQKV_TOKENS_H

#include <stdint.h>
#include <stddef.h>

#include "status.h"


/* ---- portable codec (no model needed) ---- */

/* Upper bound of the coded size of n tokens, in bytes. */
int64_t tokcm_bound(int64_t n_tokens);

/* Codes tokens[0..n) (each in [0, n_vocab)) into out; returns the number of bytes written. */
int64_t tokcm_encode(const int32_t *tokens, int64_t n_tokens, int32_t n_vocab,
                     uint8_t *out, int64_t out_cap);

/* Decodes n_tokens tokens from in[0..in_len) into out; returns the number of bytes consumed. */
int64_t tokcm_decode(const uint8_t *in, int64_t in_len, int64_t n_tokens, int32_t n_vocab,
                     int32_t *out);

/* ---- model-coded tokens ---- */

#define TOKM_SCALE_BITS 31    /* frequencies of one row sum to 2^31 */

/* Tables for the rows of one vocabulary size (about 124 KiB); reuse it for every row. */
typedef struct tokm_rows tokm_rows;
tokm_rows *tokm_rows_new(int32_t n_vocab);
void tokm_rows_free(tokm_rows *rows);

/* Frequencies of a whole logits row (tests, diagnostics): freq[0..n_vocab), each >= 1,
 * summing to 2^TOKM_SCALE_BITS.  Returns 0. */
int tokm_row_freqs(const tokm_rows *rows, const float *logits, uint32_t *freq);

/* (start, freq) of one token in a logits row: the encoder's per-token work.  Returns 0. */
int tokm_token_range(const tokm_rows *rows, const float *logits, int32_t token,
                     uint32_t *start, uint32_t *freq);

/* Encodes the recorded ranges (in coding order) into out, rANS written backwards.
 * Returns bytes written. */
int64_t tokm_encode_ranges(const uint32_t *starts, const uint32_t *freqs, int64_t n,
                           uint8_t *out, int64_t out_cap);

/* Streaming decoder over one rANS stream; in[] must outlive it.  NULL: no memory or in_len < 8. */
typedef struct tokm_decoder tokm_decoder;
tokm_decoder *tokm_decoder_new(const uint8_t *in, int64_t in_len, int32_t n_vocab);
void tokm_decoder_free(tokm_decoder *dec);
/* Next token under this logits row (>= 0), or a negative SKV_ERR_* code. */
int32_t tokm_decoder_next(tokm_decoder *dec, const float *logits);
/* 0 if the stream ended exactly where it should (all bytes consumed, final state intact). */
int tokm_decoder_finish(const tokm_decoder *dec);

#endif
