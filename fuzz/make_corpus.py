"""Seed corpus of the C decoder harnesses, made by the encoders (run from fuzz/: ``make corpus``)."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from seqkv_edge import _native
from seqkv_edge.codecs.tokens_portable import _encode_payload

HERE = Path(__file__).parent
FIXTURES = HERE.parent / "tests" / "fixtures"
VOCAB_CLASS = {259: 1, 32000: 2, 151936: 3}  # fuzz_tokens.c's vocabulary table


def write(target: str, name: str, data: bytes) -> None:
    folder = HERE / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def main() -> None:
    for stream in sorted(FIXTURES.glob("kv_lossless_v1_*.kvl")):
        write("kv_lossless", stream.name, stream.read_bytes())
    rng = np.random.default_rng(0)
    for n_vocab, n_tokens in [(259, 40), (32000, 200), (151936, 500)]:
        tokens = np.minimum(rng.zipf(1.3, n_tokens), n_vocab - 1).astype(np.int32)
        tokens[n_tokens // 2:] = tokens[: n_tokens - n_tokens // 2]  # a repeat for the match model
        prefix = struct.pack("<HB", n_tokens, VOCAB_CLASS[n_vocab])
        write("tokens", f"v{n_vocab}_{n_tokens}", prefix + _encode_payload(tokens, n_vocab))
    ffi, lib = _native.ffi, _native.lib
    for n_tokens, n_channels, scale in [(16, 8, 1), (64, 32, 4), (200, 64, 30)]:
        q = np.round(rng.laplace(0, scale, (n_tokens, n_channels))).astype(np.int32)
        cap = lib.lossy_encode_bound(q.size)
        out = bytearray(cap)
        n = lib.lossy_encode(ffi.from_buffer("int32_t[]", q), n_tokens, n_channels, ffi.from_buffer("uint8_t[]", out), cap)
        write("lossy", f"t{n_tokens}_c{n_channels}", struct.pack("<HB", n_tokens, n_channels) + bytes(out[:n]))


if __name__ == "__main__":
    main()
