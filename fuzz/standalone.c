/* Runs a harness without libFuzzer (gcc, sanitizers): every corpus file, then a fixed-seed mutation
 * loop over them. Usage: harness ITERATIONS SEED FILE... ; exits non-zero only through a sanitizer. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t state;

static uint64_t next(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static size_t mutate(uint8_t *buf, size_t size, size_t cap)
{
    for (int n = 1 + (int)(next() % 4); n > 0; n--) {
        size_t at = size ? next() % size : 0;
        switch (next() % 5) {
        case 0: if (size) buf[at] ^= (uint8_t)(1u << (next() % 8)); break;
        case 1: if (size) buf[at] = (uint8_t)next(); break;
        case 2: if (size > at + 4) { uint32_t v = (uint32_t)(next() % 3 ? next() % 256 : ~0u >> (next() % 32)); memcpy(buf + at, &v, 4); } break;
        case 3: if (size) size = at; break;
        default: if (size < cap) { memmove(buf + at + 1, buf + at, size - at); buf[at] = (uint8_t)next(); size++; }
        }
    }
    return size;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s ITERATIONS SEED FILE...\n", argv[0]);
        return 2;
    }
    long iterations = atol(argv[1]);
    state = strtoull(argv[2], NULL, 10) | 1;
    int n_files = argc - 3;
    uint8_t **files = calloc((size_t)n_files, sizeof(*files));
    size_t *sizes = calloc((size_t)n_files, sizeof(*sizes)), cap = 0;
    for (int i = 0; i < n_files; i++) {
        FILE *f = fopen(argv[3 + i], "rb");
        if (!f) { perror(argv[3 + i]); return 2; }
        fseek(f, 0, SEEK_END);
        sizes[i] = (size_t)ftell(f);
        rewind(f);
        files[i] = malloc(sizes[i] + 1);
        if (fread(files[i], 1, sizes[i], f) != sizes[i]) { perror(argv[3 + i]); return 2; }
        fclose(f);
        cap = sizes[i] > cap ? sizes[i] : cap;
        LLVMFuzzerTestOneInput(files[i], sizes[i]);
    }
    cap += 64;
    uint8_t *buf = malloc(cap);
    for (long it = 0; it < iterations; it++) {
        int i = (int)(next() % (uint64_t)n_files);
        memcpy(buf, files[i], sizes[i]);
        size_t size = mutate(buf, sizes[i], cap);
        LLVMFuzzerTestOneInput(buf, size);
    }
    printf("%s: %ld executions over %d seeds, no sanitizer finding\n", argv[0], iterations + n_files, n_files);
    for (int i = 0; i < n_files; i++)
        free(files[i]);
    free(files);
    free(sizes);
    free(buf);
    return 0;
}
