"""Reading the fields of a lossy KV payload (seqkv_edge.codecs.kv_lossy.codec's documented layout) in tests."""
from __future__ import annotations

import numpy as np

from seqkv_edge.codecs.kv_lossy.tensor import _HEADER, _HEADER2


def fields_at(payload) -> dict:
    """Offsets of the optional format-2 fields (recent window, profile digest) and of the step array."""
    flags, n_ch = payload[1], _HEADER.unpack_from(payload)[4]
    at = {"window": _HEADER.size}
    at["digest"] = at["window"] + (_HEADER2.size if flags & 4 else 0)
    at["offset"] = at["digest"] + (8 if flags & 2 else 0)
    at["step"] = at["offset"] + 4 * n_ch
    return at


def steps_of(payload) -> np.ndarray:
    """The f16 steps of a payload, as float32."""
    n_ch = _HEADER.unpack_from(payload)[4]
    return np.frombuffer(payload, np.float16, n_ch, fields_at(payload)["step"]).astype(np.float32)
