/*
 * segcode2_tables.c -- format 2's coding tables for coders outside this library (segcode.h): the WGSL shaders
 * (native/segcode_common.wgsl) read each channel's table as one row of SEGC2_SHADER_WORDS words, built here by
 * segc2_model of segcode_core.h from fitted models or from a stream's, so the tables have one implementation.
 */
#include "segcode.h"
#include "segcode_core.h"

#include <stdlib.h>

/* one channel's table as the WGSL shaders read it (native/segcode_common.wgsl): n_sym, the escape's symbol
 * (SEGC2_NSYM: none), cum[0 .. SEGC2_SHADER_WORDS - 3], SEGC_TOTFREQ from cum[n_sym] on */
static void segc2_shader_table(const Segc2Params *p, uint32_t *t)
{
    Segc2Model m;
    segc2_model(p, &m, 0);
    t[0] = m.n_sym;
    t[1] = m.esc;
    for (uint32_t s = 0; s < SEGC2_SHADER_WORDS - 2; s++)
        t[2 + s] = s <= m.n_sym ? m.cum[s] : SEGC_TOTFREQ;
}

int64_t segc2_model_tables(const uint32_t *params, uint32_t n_channels, uint32_t *tables)
{
    if (!params || !tables)
        return SKV_ERR_ARGUMENT;
    for (uint32_t c = 0; c < n_channels; c++) {
        const uint32_t *q = params + 4 * c;
        Segc2Params p = {q[0], {q[1], q[2], q[3]}};
        if (p.k < 1 || p.k > SEGC2_KMAX || p.u[0] > 255 || p.u[1] > 255 || p.u[2] > 255)
            return SKV_ERR_ARGUMENT;
        segc2_shader_table(&p, tables + (uint64_t)c * SEGC2_SHADER_WORDS);
    }
    return SKV_OK;
}

int64_t segc2_stream_tables(const uint8_t *src, int64_t src_len, uint32_t n_cells, uint32_t n_channels,
                            uint32_t *tables)
{
    int64_t n_seg = segc2_segment_count(n_cells, n_channels), rc;
    if (n_seg < 0 || !src || !tables)
        return n_seg < 0 ? n_seg : SKV_ERR_ARGUMENT;
    Segc2Params *params = (Segc2Params *)malloc(sizeof(Segc2Params) * n_channels);
    uint64_t *offsets = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)(n_seg + 1));
    rc = params && offsets ? segc2_parse(src, src_len, n_cells, n_channels, params, offsets) : SKV_ERR_MEMORY;
    for (uint32_t c = 0; rc >= 0 && c < n_channels; c++)
        segc2_shader_table(&params[c], tables + (uint64_t)c * SEGC2_SHADER_WORDS);
    free(params);
    free(offsets);
    return rc < 0 ? rc : SKV_OK;
}
