"""Rotary position embedding: read a model's RoPE parameters, and undo / redo RoPE on cached keys.

llama.cpp caches keys *after* RoPE. Undone, a key channel's constant part (Qwen2's k_proj bias) is a
constant again instead of a signal rotating with the position, so a lossy coder can subtract it. The
rotation here is our own (float64 angles from basic operations only, ``detmath.rope_angles``, and float32
arithmetic: the same bits on every CPU); ``apply_rope(undo_rope(k))`` returns ``k`` up to float32 rounding,
whatever llama.cpp's own rounding of the angles was.

    >>> params = rope_params(llm)                                  # doctest: +SKIP
    >>> pre = undo_rope(keys, cell_positions, params)  # [n_cells, n_head_kv * head_dim]  # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np

from ..detmath import rope_angles
from ..native import require

# llama.h enum llama_rope_type
ROPE_TYPE_NAMES = {-1: "none", 0: "norm", 2: "neox", 8: "mrope", 24: "vision", 40: "imrope"}


def rope_params(llm) -> dict:
    """RoPE and head layout of a ``llama_cpp.Llama`` from its GGUF metadata and context parameters.

    Returns ``{"type": "neox"|"norm"|..., "n_rot", "freq_base", "freq_scale", "head_dim_k", "head_dim_v",
    "n_head_kv"}`` (JSON-safe). ``type`` other than "neox"/"norm" means keys are coded as cached.
    """
    from llama_cpp import llama_cpp as lib

    md = llm.metadata
    arch = md.get("general.architecture", "llama")
    get = lambda key, default=None: md.get(f"{arch}.{key}", default)  # noqa: E731
    n_head = int(get("attention.head_count", 1))
    n_embd = int(get("embedding_length", 0))
    head_dim_k = int(get("attention.key_length", n_embd // max(n_head, 1)))
    head_dim_v = int(get("attention.value_length", head_dim_k))
    n_rot = int(get("rope.dimension_count", head_dim_k))
    ctx = llm.context_params
    freq_base = float(ctx.rope_freq_base) or float(get("rope.freq_base", 10000.0))
    scaling = get("rope.scaling.type", "none")
    factor = float(get("rope.scaling.factor", 0.0) or 0.0)
    freq_scale = float(ctx.rope_freq_scale) or (1.0 / factor if scaling == "linear" and factor > 0 else 1.0)
    rope_type = ROPE_TYPE_NAMES.get(int(lib.llama_model_rope_type(llm.model)), "unknown")
    if scaling not in ("none", "linear"):  # YaRN & co. also scale magnitudes: code keys as cached
        rope_type = f"{rope_type}+{scaling}"
    return {"type": rope_type, "n_rot": n_rot, "freq_base": freq_base, "freq_scale": freq_scale,
            "head_dim_k": head_dim_k, "head_dim_v": head_dim_v, "n_head_kv": int(get("attention.head_count_kv", n_head))}


def rope_supported(rope: dict | None) -> bool:
    return (bool(rope) and rope.get("type") in ("neox", "norm") and 0 < rope["n_rot"] <= rope["head_dim_k"]
            and rope["n_rot"] % 2 == 0)


_last_angles: tuple = (None, None)  # (key, (cos, sin)): every layer of a state rotates by the same angles


def _angles(positions: np.ndarray, rope: dict) -> tuple[np.ndarray, np.ndarray]:
    global _last_angles
    key = (positions.tobytes(), rope["n_rot"], rope["freq_base"], rope["freq_scale"])
    cached_key, angles = _last_angles  # one read: another thread may swap the pair
    if cached_key != key:
        angles = _compute_angles(positions, rope)
        _last_angles = (key, angles)
    return angles


def _compute_angles(positions: np.ndarray, rope: dict) -> tuple[np.ndarray, np.ndarray]:
    cos, sin = rope_angles(positions, rope["n_rot"], rope["freq_base"], rope["freq_scale"])
    return cos[:, None, :], sin[:, None, :]


def _rotate(keys: np.ndarray, positions: np.ndarray, rope: dict, sign: float) -> np.ndarray:
    """A float32 copy of ``keys`` rotated by ``sign`` times each cell's angles (native ``rope_rotate``)."""
    n_cells, head_dim, n_rot = keys.shape[0], rope["head_dim_k"], rope["n_rot"]
    if keys.shape[1] % head_dim:
        raise ValueError(f"{keys.shape[1]} key channels are not a whole number of {head_dim}-wide heads")
    if len(positions) != n_cells:
        raise ValueError(f"{len(positions)} positions for {n_cells} cells")
    if not rope_supported(rope):
        raise ValueError(f"RoPE {rope['type']!r} rotating {n_rot} of {head_dim} channels: not a supported rotation")
    out = np.array(keys, dtype=np.float32, order="C", copy=True)
    cos, sin = (np.ascontiguousarray(a) for a in _angles(positions, rope))
    ffi, lib = require()
    lib.rope_rotate(ffi.from_buffer("float[]", out), n_cells, out.shape[1], head_dim, n_rot, rope["type"] == "neox",
                    ffi.from_buffer("float[]", cos), ffi.from_buffer("float[]", sin), sign)
    return out


def apply_rope(keys: np.ndarray, positions: np.ndarray, rope: dict) -> np.ndarray:
    """Rotate pre-RoPE keys ``[n_cells, n_head * head_dim]`` to their cell positions (float32 copy)."""
    return _rotate(keys, positions, rope, 1.0)


def undo_rope(keys: np.ndarray, positions: np.ndarray, rope: dict) -> np.ndarray:
    """Rotate cached (post-RoPE) keys back to position 0 (float32 copy)."""
    return _rotate(keys, positions, rope, -1.0)
