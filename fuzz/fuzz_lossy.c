/* lossy residual decoder: u16 tokens and u8 channels up front, then the coded payload. */
#include <stdint.h>
#include <stdlib.h>

#include "lossy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    uint32_t n_tokens = data[0] | (data[1] << 8), n_channels = data[2];
    int32_t *q = malloc((size_t)(n_tokens * n_channels ? n_tokens * n_channels : 1) * sizeof(int32_t));
    if (q)
        lossy_decode(data + 3, size - 3, n_tokens, n_channels, q);
    free(q);
    return 0;
}
