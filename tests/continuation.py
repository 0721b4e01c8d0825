"""What a restored context does next: the logits of tokens evaluated one at a time (compared bit for bit)."""
from __future__ import annotations

import numpy as np

from seqkv_edge.state import llama_api


def next_logits(llm, tokens) -> np.ndarray:
    """The logits ``[len(tokens), n_vocab]`` after each of ``tokens``, evaluated one at a time."""
    rows = []
    for token in tokens:
        llm.eval([token])
        rows.append(np.ctypeslib.as_array(llama_api.logits(llm), shape=(llm.n_vocab(),)).copy())
    return np.array(rows)
