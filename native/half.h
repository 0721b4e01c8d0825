/*
 * half.h -- f16 <-> f32 conversion of whole arrays (F16C where the CPU has it; the portable code gives
 * the same bits, and the same as numpy's astype).
 * Declared to Python (@cffi): native/build_native.py reads its prototypes and constants.
 */
#ifndef SEQKV_HALF_H
#define SEQKV_HALF_H

#include <stddef.h>
#include <stdint.h>

void half_f16_to_f32(const uint16_t *src, size_t n, float *dst);
void half_f32_to_f16(const float *src, size_t n, uint16_t *dst);

#endif /* SEQKV_HALF_H */
