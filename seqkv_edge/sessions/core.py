"""The session core: every save and restore of a context's session goes through :func:`save` and :func:`load` —
snapshot files, tokens-only files, names in a store — called by ``SeqKV.save`` / ``SeqKV.load`` (the
``kv_compressor`` protocol that ``seqkv_edge.Llama`` and llama-cpp-python's patched ``Llama`` both use).

Routing, one rule: a target goes to the store when the settings name one (``SeqKV(store=...)``) and the target is a
plain name (``named.is_session_name``: no path separator, no ``.seqkv`` suffix); anything else is a file.
Rollback, one rule (``base.rollback_on_failure``): on any failure or cancellation of a restore, the live context
(its cells and tokens) is exactly as before. Every call returns a ``base.SessionInfo``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from ..container.streamed import open_streamed
from . import snapshot, tokens
from .base import SessionInfo, reused_buffer, rollback_on_failure
from .prefill import Progress

__all__ = ["load", "save", "session_store"]


def _named():
    """``sessions.named``, imported on first use: the store and its compiled kernels load only for a Llama that
    keeps sessions in one (a process that restores one file does not wait for them)."""
    from . import named

    return named


def session_store(llm, config):
    """The store a Llama's sessions go to (``config.store``), opened once per Llama; None without one."""
    store = getattr(llm, "session_store", None)
    if store is None and config.store is not None:
        store = _named().open_session_store(config.store, budget_bytes=config.store_budget_bytes,
                                            n_threads=config.n_threads)
        llm.session_store = store
    return store


def _chunk_codec(llm, store):
    cache = getattr(llm, "cache", None)
    return getattr(cache, "codec", None) if getattr(cache, "store", None) is store else None


def save(llm, target: Union[str, Path], config, progress: Progress = None) -> SessionInfo:
    """Save ``llm``'s sequence 0 to ``target`` (a file, or a name in the store) with the settings ``config``."""
    store = session_store(llm, config)
    if store is not None and _named().is_session_name(target):
        return _named().save_named(llm, store, target, codec=_chunk_codec(llm, store))
    if config.kv == "none":
        return tokens.save(llm, target, config, progress)
    return snapshot.save(llm, target, config)


def load(llm, target: Union[str, Path], config, progress: Progress = None) -> SessionInfo:
    """Restore ``target`` (a file, or a name in the store) into ``llm``; on any error or cancellation the context
    is left exactly as it was."""
    store = session_store(llm, config)
    if store is not None and _named().is_session_name(target):
        return _named().load_named(llm, store, target, codec=_chunk_codec(llm, store), progress=progress)
    # read by a thread of its own while the KV sections decode, each as soon as it is in
    with open_streamed(target, buffer=lambda size: reused_buffer(llm, "file", size)) as container:
        if container.header is not None:
            container.complete()
            with rollback_on_failure(llm):
                return tokens.load_file(llm, target, container, progress)
        return snapshot.load(llm, target, container, device=config.device)  # rolls back around its writing in
