/* tokens_portable decoder: u16 token count and u8 vocabulary class up front, then the coded payload. */
#include <stdint.h>
#include <stdlib.h>

#include "tokens.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int32_t vocabs[4] = {2, 259, 32000, 151936};
    if (size < 3)
        return 0;
    int64_t n_tokens = data[0] | (data[1] << 8);
    int32_t n_vocab = vocabs[data[2] & 3];
    int32_t *out = malloc((size_t)(n_tokens ? n_tokens : 1) * sizeof(int32_t));
    if (out)
        tokcm_decode(data + 3, (int64_t)size - 3, n_tokens, n_vocab, out);
    free(out);
    return 0;
}
