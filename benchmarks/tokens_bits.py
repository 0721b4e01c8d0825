"""Bits per token of the two token codecs, side by side with their baselines.

Portable codec (no model to decode) vs zstd-19 of the int32 ids, on English texts Debian ships:
the GPL-3 licence and fortune files (``apt-get install fortunes``), tokenised with the default
model's vocabulary.  Model-coded tokens on GPL-3 with the real model (one-token steps, n_ctx 2048):
stream bytes vs the ideal code length sum(-log2 p), and the encoder's time per token vs the model's.

    python benchmarks/tokens_bits.py                 # both tables (~1 min on 2 cores)
    python benchmarks/tokens_bits.py --skip-model    # portable table only (seconds)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import zstandard

from seqkv_edge.codecs.tokens_model import (
    ModelTokenDecoder,
    ModelTokenEncoder,
    ideal_bits,
)
from seqkv_edge.codecs.tokens_portable import TokensPortableCodec
from seqkv_edge.models import default_model_path

TEXTS = [
    ("GPL-3", "/usr/share/common-licenses/GPL-3"),
    ("fortunes/wisdom", "/usr/share/games/fortunes/wisdom"),
    ("fortunes/literature", "/usr/share/games/fortunes/literature"),
    ("fortunes/people", "/usr/share/games/fortunes/people"),
]
LENGTHS = (2000, 8000)


def tokenize_files(model_path: str) -> dict[str, np.ndarray]:
    from seqkv_edge.hardware import load_plain_llama

    vocab = load_plain_llama(model_path=model_path, vocab_only=True, verbose=False)
    tokens = {}
    for name, path in TEXTS:
        if Path(path).is_file():
            text = Path(path).read_bytes()
            tokens[name] = np.array(vocab.tokenize(text, add_bos=False, special=False), dtype=np.int32)
    return tokens


def portable_rows(tokens: dict[str, np.ndarray]) -> list[tuple]:
    codec = TokensPortableCodec()
    rows = []
    for name, ids in tokens.items():
        for target in LENGTHS:
            length = target if len(ids) >= target else len(ids)  # GPL-3 has 7,486 tokens: all of it
            if length < 0.9 * target:
                continue
            sample = ids[:length]
            start = time.perf_counter()
            coded = codec.encode(sample)
            encode_s = time.perf_counter() - start
            assert (codec.decode(coded) == sample).all()
            zstd = zstandard.ZstdCompressor(level=19).compress(sample.astype("<i4").tobytes())
            rows.append((name, length, 8 * len(coded) / length, 8 * len(zstd) / length, 1e6 * encode_s / length))
    return rows


def print_portable(rows: list[tuple]) -> None:
    print("\nPortable token codec (first N tokens of each text, Qwen2.5 vocabulary)")
    print(f"{'text':<22}{'tokens':>8}{'portable b/tok':>16}{'zstd-19 b/tok':>15}{'encode us/tok':>15}")
    for name, length, portable, zstd, micros in rows:
        print(f"{name:<22}{length:>8}{portable:>16.2f}{zstd:>15.2f}{micros:>15.1f}")


def step_logits(llm, token: int):
    """One-token step; returns the logits pointer (n_vocab floats, valid until the next step)."""
    start = time.perf_counter()
    llm.eval([token])
    elapsed = time.perf_counter() - start
    return llm._ctx.get_logits(), elapsed


def model_coded(model_path: str, n_tokens: int, checkpoint_tokens: int, check_bits: int, threads: int) -> dict:
    """Codes GPL-3 tokens 1..n_tokens with the logits of one-token steps, then decodes them back."""
    from seqkv_edge.hardware import load_plain_llama

    llm = load_plain_llama(model_path=model_path, n_ctx=2048, n_threads=threads, verbose=False)
    ids = llm.tokenize(Path(TEXTS[0][1]).read_bytes(), add_bos=False, special=False)[: n_tokens + 1]
    encoder = ModelTokenEncoder(llm.n_vocab(), checkpoint_tokens, check_bits)
    logits, _ = step_logits(llm, ids[0])  # the first token has no context: not model-coded
    ideal, step_s, add_s = 0.0, 0.0, 0.0
    for i, token in enumerate(ids[1:], start=1):
        ideal += ideal_bits(np.ctypeslib.as_array(logits, shape=(llm.n_vocab(),)), token)
        start = time.perf_counter()
        encoder.add(logits, token)
        add_s += time.perf_counter() - start
        logits, elapsed = step_logits(llm, token)
        step_s += elapsed
    stream = encoder.finish()
    llm.reset()
    decoder = ModelTokenDecoder(stream, llm.n_vocab())
    logits, _ = step_logits(llm, ids[0])
    decoded, next_s = [], 0.0
    for _ in range(n_tokens):
        start = time.perf_counter()
        decoded.append(decoder.next(logits))
        next_s += time.perf_counter() - start
        logits, _ = step_logits(llm, decoded[-1])
    decoder.done()
    assert decoded == list(ids[1:]), "model-coded round trip failed"
    return {"tokens": n_tokens, "bytes": len(stream), "payload": decoder.payload_size, "ideal_bytes": ideal / 8,
            "step_ms": 1e3 * step_s / n_tokens, "add_ms": 1e3 * add_s / n_tokens, "next_ms": 1e3 * next_s / n_tokens,
            "checks": f"{check_bits}-bit check / {checkpoint_tokens} tokens"}


def print_model(result: dict) -> None:
    n, size, ideal = result["tokens"], result["bytes"], result["ideal_bytes"]
    print(f"\nModel-coded tokens: GPL-3 tokens 1..{n}, default model, one-token steps, n_ctx 2048")
    print(f"{'':<44}{'bytes':>10}{'bits/token':>12}")
    print(f"{'ideal sum(-log2 p)':<44}{ideal:>10.1f}{8 * ideal / n:>12.3f}")
    print(f"{'rANS payload (incl. 8-B state)':<44}{result['payload']:>10d}{8 * result['payload'] / n:>12.3f}")
    print(f"{'whole stream (' + result['checks'] + ')':<44}{size:>10d}{8 * size / n:>12.3f}")
    print(f"{'limit 1.01 x ideal + 128':<44}{1.01 * ideal + 128:>10.1f}")
    print(f"{'raw int32 ids':<44}{4 * n:>10d}{32:>12.3f}")
    step, add, nxt = result["step_ms"], result["add_ms"], result["next_ms"]
    print(f"time per token: model step {step:.2f} ms, encoder add {add:.3f} ms ({100 * add / step:.1f}% of the step), "
          f"decoder next {nxt:.3f} ms ({100 * nxt / step:.1f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-model", action="store_true", help="only the portable table")
    parser.add_argument("--model-tokens", type=int, default=500)
    parser.add_argument("--checkpoint-tokens", type=int, default=512)
    parser.add_argument("--check-bits", type=int, default=8, choices=(8, 16, 32))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model_path = default_model_path()
    print_portable(portable_rows(tokenize_files(model_path)))
    if not args.skip_model:
        result = model_coded(model_path, args.model_tokens, args.checkpoint_tokens, args.check_bits, args.threads)
        print_model(result)


if __name__ == "__main__":
    main()
