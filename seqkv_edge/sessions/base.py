"""What every save and restore shares: the one result type (:class:`SessionInfo`) and the one rollback rule
(:func:`rollback_on_failure`: on any failure or cancellation the live context, its cells and its tokens, is put
back exactly as it was)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from ..state import llama_api
from ..state.blob import read_seq_state
from ..state.swa import write_state

__all__ = ["SessionInfo", "reused_buffer", "rollback_on_failure", "set_tokens"]

# Restores keep their file and state buffers on the Llama up to this size each: writing into fresh pages costs about
# as much as decoding into them (page faults), and llama.cpp's raw restore reuses its buffer too.
_KEEP_BUFFER_BYTES = 1 << 28


@dataclass
class SessionInfo:
    """What a save or a restore did: where, sizes, how the KV was obtained, the seconds each step took.

    ``target`` is the file path or the store name (``path`` and ``name`` read it too); ``stored_bytes`` the file's
    size, or the bytes a store save added (``file_bytes``, ``new_bytes``).
    """

    target: str
    n_tokens: int
    raw_bytes: int = 0  # llama.cpp's own sequence state for the same cells
    stored_bytes: int = 0
    seconds: dict = field(default_factory=dict)
    restored_by: str = ""  # restores: "snapshot", "store", "prefill", "exact replay", "one-token replay"
    where: str = "file"  # "file" or "store"
    reused_tokens: int = 0  # store saves: tokens whose KV chunks the store already held
    kv_stored: bool = True  # store saves: False when the store had no room (the tokens are saved)
    restored_tokens: int = 0  # store restores: tokens restored from stored KV
    replayed_tokens: int = 0  # store restores: tokens recomputed after them

    @property
    def path(self) -> str:
        return self.target

    @property
    def name(self) -> str:
        return self.target

    @property
    def file_bytes(self) -> int:
        return self.stored_bytes

    @property
    def new_bytes(self) -> int:
        return self.stored_bytes

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 5)}


def set_tokens(llm, tokens) -> None:
    """After a state was written: the Llama's tokens are ``tokens``; no logits are stored, so the next
    ``generate()`` evaluates the last token again."""
    n = len(tokens)
    llm.input_ids[:n] = tokens
    llm.n_tokens = n
    llama_api.mark_logits_stale(llm)


def reused_buffer(llm, name: str, size: int) -> memoryview:
    """A writable buffer of ``size`` bytes, the one kept on ``llm`` under ``name`` when it is large enough (buffers
    up to ``_KEEP_BUFFER_BYTES`` are kept for the next call; its previous contents are not cleared)."""
    kept = llm.__dict__.setdefault("_seqkv_buffers", {})
    buf = kept.get(name)
    if buf is None or len(buf) < size:
        kept.pop(name, None)
        buf = bytearray(size)
        if size <= _KEEP_BUFFER_BYTES:
            kept[name] = buf
    return memoryview(buf)[:size]


@contextmanager
def rollback_on_failure(llm):
    """Put the context (cells, tokens) back as it was if the block fails or is cancelled."""
    n_tokens = llm.n_tokens
    # one copy of the state, in memory of its own (not zeroed first: llama.cpp writes all of it)
    previous = read_seq_state(llm.ctx, out=lambda size: np.empty(size, np.uint8)) if n_tokens else None
    input_ids = llm.input_ids[:n_tokens].copy()
    try:
        yield
    except BaseException:
        llama_api.clear_cells(llm)
        if previous is not None:
            write_state(llm, previous)
        set_tokens(llm, input_ids)
        raise
