"""TurboQuant (arXiv 2504.19874) through the peer package ``pyturboquant-cpu==0.1.0``, applied to a KV state.

Each K/V head vector (head_dim values of one cell, keys as cached: after RoPE) is quantized with
``quantize_mse(X, bits=b, seed=...)`` and reconstructed with ``dequantize_mse``. Stored bits are counted
honestly: b per coordinate plus a 16-bit norm per quantized vector. Fractional rates split each head vector
in two halves coded at b and b + 1 bits (each half keeps its own norm). The package's bit packing is
replaced by a no-op (we count bits, we do not need the packed bytes; its 3-bit packer is slow). The package
comes with the ``bench`` extra (``pip install "seqkv_edge[bench]"``).

    >>> blob, bits_per_value = turboquant_state(state, 3, head_dims=(64, 64))      # doctest: +SKIP
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import SeqKVError

NORM_BITS = 16


def _patch_packing():
    try:
        import pyturboquant_cpu.quantizer as q
    except ImportError as error:
        raise SeqKVError("the TurboQuant comparison needs the peer package: pip install pyturboquant-cpu==0.1.0 "
                         '(or pip install "seqkv_edge[bench]")') from error

    q.pack_indices_fast = lambda indices, bits: np.asarray(indices, dtype=np.uint8).copy()
    q.unpack_indices_fast = lambda packed, bits, count: np.asarray(packed[:count], dtype=np.uint32)


def _quantize(vectors: np.ndarray, bits: int, seed: int) -> np.ndarray:
    from pyturboquant_cpu import dequantize_mse, quantize_mse

    return dequantize_mse(quantize_mse(vectors.astype(np.float64), bits=bits, seed=seed)).astype(np.float32)


def turboquant_vectors(x: np.ndarray, head_dim: int, bits: float, seed: int = 0) -> tuple[np.ndarray, float]:
    """Quantize ``x`` [n_cells, n_heads * head_dim] per head vector; returns (reconstruction, stored bits)."""
    _patch_packing()
    n_cells, n_ch = x.shape
    vecs = x.reshape(-1, head_dim)
    lo = int(math.floor(bits))
    if bits == lo:
        out = _quantize(vecs, lo, seed)
        stored = vecs.size * lo + len(vecs) * NORM_BITS
    else:  # halves at lo and lo + 1 bits: bits = lo + 0.5
        half = head_dim // 2
        out = np.concatenate([_quantize(vecs[:, :half], lo + 1, seed), _quantize(vecs[:, half:], lo, seed + 1)], axis=1)
        stored = vecs.size * (lo + 0.5) + 2 * len(vecs) * NORM_BITS
    return out.reshape(n_cells, n_ch), stored


def turboquant_state(state, bits: float, head_dims: tuple[int, int] = (64, 64), seed: int = 0) -> tuple[bytes, float]:
    """A copy of ``state``'s blob with every K/V tensor TurboQuant-ed per head vector (``head_dims``: the K and
    V head sizes); returns (blob, bits per value)."""
    from ..codecs.kv_lossy.codec import store_values, tensor_values
    from ..state.blob import skeleton_layout

    blob, tensors = skeleton_layout(state.skeleton())
    total_bits, n_values = 0.0, 0
    for i, (src, dst) in enumerate(zip(state.tensors(), tensors)):
        x = tensor_values(src)
        head_dim = head_dims[0] if src.kind == "k" else head_dims[1]
        y, stored = turboquant_vectors(x, head_dim, bits, seed + 7919 * i)
        store_values(dst, y)
        total_bits, n_values = total_bits + stored, n_values + x.size
    return bytes(blob), total_bits / n_values
