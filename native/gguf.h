/*
 * gguf.h -- the length of a GGUF file's header (magic, version, counts, metadata, tensor infos), which the model
 * fingerprint hashes: a header holds ~300,000 strings for a 150k-token vocabulary, walked here instead of in Python.
 * Declared to Python (@cffi): native/build_native.py reads its prototypes and constants.
 */
#ifndef SEQKV_GGUF_H
#define SEQKV_GGUF_H

#include <stdint.h>

#include "status.h"

/* The header's byte length when buf[0, len) holds all of it; 0 when buf ends inside it (read more and call again);
 * SKV_ERR_CORRUPT when it is not a GGUF header (bad magic, unknown value type, arrays nested too deep). */
int64_t gguf_header_length(const uint8_t *buf, int64_t len);

#endif /* SEQKV_GGUF_H */
