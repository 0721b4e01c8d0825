/* Internal to tokens_cm*.c: the context model of the portable token codec.
 *
 * The model predicts one binary decision at a time.  A decision belongs to one of three
 * branches: the "novel" flag (is this token's first occurrence?), the tree walk among tokens
 * already seen (REP), or the tree walk among tokens not yet seen (NOVEL).  Probabilities are
 * 16-bit integers (P(bit = 1) * 65536); everything is integer arithmetic. */
#ifndef SEQKV_TOKENS_CM_H
#define SEQKV_TOKENS_CM_H

#include <stdint.h>

enum { TOKCM_FLAG = 0, TOKCM_REP = 1, TOKCM_NOVEL = 2 };

#define TOKCM_PHASES 14      /* bucket-tree depths 0..4, mantissa bits 0..8+ */

typedef struct {
    int branch;              /* TOKCM_FLAG, TOKCM_REP or TOKCM_NOVEL */
    uint32_t node;           /* node id, unique within its branch */
    int phase;               /* < TOKCM_PHASES */
    int expected;            /* the match model's bit, or -1 */
    int prior16;             /* count-based P(1) from the subtree statistics, 1..65535 */
} tokcm_decision;

typedef struct tokcm_model tokcm_model;

tokcm_model *tokcm_model_new(int64_t n_tokens, uint32_t n_nodes);
void tokcm_model_free(tokcm_model *m);
/* Hashes the contexts of token i (tokens before i) and follows or finds a match.
 * Returns the match model's predicted token, or -1. */
int32_t tokcm_model_begin(tokcm_model *m, const int32_t *tokens, int64_t i);
/* Token i is known: advance or drop the match. */
void tokcm_model_end(tokcm_model *m, const int32_t *tokens, int64_t i);
int tokcm_model_predict(tokcm_model *m, const tokcm_decision *d);
void tokcm_model_update(tokcm_model *m, int bit);

int tokcm_bit_length(uint32_t v);

#endif
