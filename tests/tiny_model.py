"""Writes a tiny llama-architecture GGUF (random weights, byte-level SPM vocabulary) for fast tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
N_LAYER = 2
N_FF = 128
N_SPECIAL = 3  # <unk>, <s>, </s>


def _vocab():
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    scores = [0.0] * len(tokens)
    # gguf token types: 2 unknown, 3 control, 6 byte
    types = [2, 3, 3] + [6] * 256
    return tokens, scores, types


def write_tiny_gguf(path: str | Path, seed: int = 0, n_layer: int = N_LAYER, n_embd: int = N_EMBD) -> Path:
    """Write the tiny model to ``path`` (deterministic for a given seed) and return the path.

    ``n_embd`` sets the head size (``n_embd / 4``): q8_0/q4_0 caches need heads of 32 or more values.
    """
    import gguf

    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)
    head_dim = n_embd // N_HEAD

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("seqkv-tiny")
    writer.add_context_length(4096)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all f32
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)

    def tensor(name, shape, scale=0.2):
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    tensor("token_embd.weight", (n_vocab, n_embd), 1.0)
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        tensor(f"blk.{i}.attn_q.weight", (n_embd, n_embd))
        tensor(f"blk.{i}.attn_k.weight", (N_HEAD_KV * head_dim, n_embd))
        tensor(f"blk.{i}.attn_v.weight", (N_HEAD_KV * head_dim, n_embd))
        tensor(f"blk.{i}.attn_output.weight", (n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", (N_FF, n_embd))
        tensor(f"blk.{i}.ffn_up.weight", (N_FF, n_embd))
        tensor(f"blk.{i}.ffn_down.weight", (n_embd, N_FF))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    tensor("output.weight", (n_vocab, n_embd))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
