"""``SeqKVCache``: a ``llama_cpp`` prompt cache over the deduplicated session store.

``llama_cpp.Llama.create_completion`` asks its cache for ``cache[prompt_tokens]`` (a
``LlamaState`` to ``load_state``) and stores ``cache[prompt + completion] = save_state()``.
llama-cpp-python's own caches pickle the whole context state per entry and scan every key on
lookup; this one keeps entries in a :mod:`seqkv_edge.store` (one copy of every shared prefix,
lossless-coded KV chunks, O(prefix) trie lookup), and answers with the longest stored prefix
of the key without removing it.

``LlamaState.llama_state`` is the whole-context state (``llama_state_get_data``: architecture
name, then the memory section); entries are converted to and from the sequence-0 state the
chunks hold (:func:`seqkv_edge.container.chunks.full_to_seq_state`).

>>> llm = load_plain_llama(model_path=path, n_ctx=4096)  # or any llama_cpp.Llama  # doctest: +SKIP
>>> llm.set_cache(SeqKVCache(open_session_store("prompt-cache/"), llm))  # doctest: +SKIP
>>> llm.create_completion(long_prompt + "Q1")                             # doctest: +SKIP
>>> llm.create_completion(long_prompt + "Q2")  # restores long_prompt's KV from the store  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import logging
import weakref
from dataclasses import dataclass
from typing import Sequence

import llama_cpp
import numpy as np

from .container.chunks import (
    ChunkCodec,
    default_codec,
    full_to_seq_state,
    seq_to_full_state,
)
from .errors import SeqKVError
from .sessions.named import CACHE_PREFIX, bind_store, fetch_prefix, open_session_store
from .state.blob import max_cell_bytes, parse_seq_state
from .store import SessionStore

log = logging.getLogger(__name__)


@dataclass
class CacheCounters:
    lookups: int = 0
    hits: int = 0  # __getitem__ returned a state
    hit_tokens: int = 0  # tokens restored by those states
    skipped: int = 0  # the bound Llama already held at least the stored prefix
    misses: int = 0
    stores: int = 0  # __setitem__ calls that added a session
    already_stored: int = 0  # __setitem__ calls whose tokens were all stored already


class SeqKVCache(llama_cpp.BaseLlamaCache):
    """Prompt cache for ``llama_cpp.Llama.set_cache`` backed by a session store.

    Args:
        store: a store from :func:`~seqkv_edge.sessions.named.open_session_store`, or a location
            (directory or ``redis://`` URL) to open one.
        llm: the Llama the cache serves (held weakly): states are built for its context, and the
            store is checked to serve its model and cache layout.
        capacity_bytes: evict stored chunks beyond this many bytes after each store (None: the
            store's own budget only).
        min_tokens: prefixes shorter than this are not worth restoring (a miss).
        skip_if_live: a lookup whose stored prefix is no longer than what the Llama's context
            already holds of the key is a miss, without decoding anything (llama_cpp would
            ignore the state anyway).

    ``counters`` counts hits, misses and stores.
    """

    def __init__(self, store, llm, *, capacity_bytes: int | None = None, min_tokens: int = 1,
                 skip_if_live: bool = True, codec: ChunkCodec | None = None):
        super().__init__(capacity_bytes or 0)
        self.store: SessionStore = open_session_store(store)
        self.capacity_bytes = capacity_bytes
        self.min_tokens = min_tokens
        self.skip_if_live = skip_if_live
        self.codec = codec or default_codec()
        self._llm = weakref.ref(llm)
        self._digest = bind_store(self.store, llm)
        self.counters = CacheCounters()

    @classmethod
    def from_config(cls, config, llm) -> "SeqKVCache":
        """The cache a ``seqkv_edge.Llama(kv_compressor=SeqKV(store=...))`` installs."""
        store = open_session_store(config.store, budget_bytes=getattr(config, "store_budget_bytes", None),
                                   n_threads=config.n_threads)
        return cls(store, llm, codec=ChunkCodec(config.n_threads))

    @property
    def llm(self):
        llm = self._llm()
        if llm is None:
            raise SeqKVError("the Llama this SeqKVCache served has been deleted")
        return llm

    @property
    def cache_size(self) -> int:
        """Chunk bytes stored (shared prefixes counted once, named sessions included)."""
        return self.store.stats().payload_bytes

    def __contains__(self, key: Sequence[int]) -> bool:
        return self.store.longest_prefix(_tokens(key)).length >= self.min_tokens

    def __getitem__(self, key: Sequence[int]) -> llama_cpp.LlamaState:
        """A state restoring the longest stored prefix of ``key`` (KeyError when there is none)."""
        tokens = _tokens(key)
        self.counters.lookups += 1
        llm = self.llm
        floor = self.min_tokens
        if self.skip_if_live and llm.n_tokens:
            floor = max(floor, _common_prefix(llm.input_ids[:llm.n_tokens], tokens) + 1)
            if self.store.longest_prefix(tokens).length < floor:
                self.counters.skipped += 1
                raise KeyError("the context already holds at least the stored prefix")
        length, blob = fetch_prefix(self.store, tokens, self._digest, self.codec, min_length=floor,
                                    max_cell_bytes=max_cell_bytes(llm))
        if blob is None:
            self.counters.misses += 1
            raise KeyError("no stored prefix")
        self.counters.hits += 1
        self.counters.hit_tokens += length
        return self._state(llm, tokens[:length], blob)

    def __setitem__(self, key: Sequence[int], value: llama_cpp.LlamaState) -> None:
        """Store ``value`` (its ``n_tokens`` first tokens; the key may run one sampled token further)."""
        llm = self.llm
        n = int(value.n_tokens)
        tokens = np.array(value.input_ids[:n], dtype=np.int32)
        if n == 0:
            return
        if self.store.longest_prefix(tokens).length == n:
            self.counters.already_stored += 1
            return
        _, seq_blob = full_to_seq_state(memoryview(value.llama_state)[:value.llama_state_size])
        state = parse_seq_state(seq_blob, model=llm)
        chunks = self.codec.session_chunks(state, tokens, llm.n_vocab(), self._digest)
        name = CACHE_PREFIX + hashlib.sha1(tokens.tobytes()).hexdigest()[:20]
        self.store.put_session(name, tokens, chunks.payload)
        self.counters.stores += 1
        if self.capacity_bytes is not None and self.store.stats().payload_bytes > self.capacity_bytes:
            self.store.evict(self.capacity_bytes)

    def _state(self, llm, tokens: np.ndarray, blob) -> llama_cpp.LlamaState:
        from .state.blob import model_arch
        from .state.swa import window_slots

        full = seq_to_full_state(model_arch(llm).encode(), window_slots(blob, llm))
        input_ids = np.zeros(llm.input_ids.shape[0], dtype=np.intc)
        input_ids[:tokens.shape[0]] = tokens
        # load_state writes scores[:n_tokens] = state.scores: one zero row broadcasts (no logits are
        # stored; load_state sets _requires_eval, so generate() recomputes the last token's logits)
        scores = np.zeros((1, llm.n_vocab()), dtype=np.single)
        return llama_cpp.LlamaState(input_ids=input_ids, scores=scores, n_tokens=int(tokens.shape[0]),
                                    llama_state=full, llama_state_size=len(full), seed=llm._seed)


def _tokens(key) -> np.ndarray:
    return np.asarray(key, dtype=np.int32).reshape(-1)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(a.shape[0], b.shape[0])
    differ = np.flatnonzero(np.asarray(a[:n]) != b[:n])
    return int(differ[0]) if differ.size else n
