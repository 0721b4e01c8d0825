/* rope.c -- see rope.h. Built with -ffp-contract=off (build_native.py): no multiply-add is fused, so each value
 * rounds as numpy's a * cos - b * sin does. */
#include "rope.h"

#include <stddef.h>

void rope_rotate(float *x, uint32_t n_cells, uint32_t width, uint32_t head_dim, uint32_t n_rot, int neox,
                 const float *cos, const float *sin, float sign)
{
    uint32_t half = n_rot / 2, n_heads = head_dim ? width / head_dim : 0;
    size_t step = neox ? 1 : 2, offset = neox ? half : 1;
    for (uint32_t t = 0; t < n_cells; t++) {
        const float *c = cos + (size_t)t * half, *s = sin + (size_t)t * half;
        for (uint32_t h = 0; h < n_heads; h++) {
            float *v = x + (size_t)t * width + (size_t)h * head_dim;
            for (uint32_t i = 0; i < half; i++) {
                float *pa = v + i * step, *pb = pa + offset;
                float a = *pa, b = *pb, sn = s[i] * sign;
                *pa = a * c[i] - b * sn;
                *pb = a * sn + b * c[i];
            }
        }
    }
}
