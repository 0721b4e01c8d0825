/* kv_lossless decoder: any bytes, decoded as the stream header describes (outputs capped at 16 MiB). */
#include <stdint.h>
#include <stdlib.h>

#include "kvcodec.h"

#define MAX_OUT (16 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int type, token_major;
    int64_t n_channels, n_tokens;
    if (kvc_stream_info(data, (int64_t)size, &type, &token_major, &n_channels, &n_tokens) != SKV_OK)
        return 0;
    int64_t row = kvc_row_bytes(type, n_channels);
    if (row < 0 || (row && n_tokens > MAX_OUT / row))
        return 0;
    int64_t out_len = row * n_tokens;
    uint8_t *out = malloc(out_len ? (size_t)out_len : 1);
    kvc_workspace *ws = kvc_workspace_new();
    if (out && ws)
        kvc_decode(data, (int64_t)size, type, token_major, n_channels, out, out_len, ws);
    kvc_workspace_free(ws);
    free(out);
    return 0;
}
