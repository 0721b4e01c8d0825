"""``seqkv_edge.Llama``: ``llama_cpp.Llama`` with compressed, bit-exact session save and restore."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import llama_cpp

from .config import SeqKV
from .hardware import model_loading
from .sessions.base import SessionInfo
from .state import llama_api
from .sessions.prefill import Progress
from .sessions.schedule import ScheduleRecorder


class Llama(llama_cpp.Llama):
    """A ``llama_cpp.Llama`` that saves and restores its context as compressed session files.

    It takes every argument of ``llama_cpp.Llama`` plus ``kv_compressor`` and ``weight_repack`` (None: llama.cpp's
    weight repack stays on except on AMX CPUs, where it crashes; True / False force it, see ``seqkv_edge.hardware``)
    and changes nothing else.

    Example (with the default model installed)::

        from seqkv_edge import Llama, SeqKV
        llm = Llama(model_path=path, n_ctx=4096, kv_compressor=SeqKV(kv="lossless"))
        llm.eval(llm.tokenize(b"A long shared document ..."))
        info = llm.save_session("chat.seqkv")      # sizes, ratio, timings
        llm2 = Llama(model_path=path, n_ctx=4096, kv_compressor=SeqKV())
        llm2.load_session("chat.seqkv")            # continues exactly where llm stopped
    """

    def __init__(self, *args, kv_compressor: Optional[SeqKV] = None, weight_repack: Optional[bool] = None, **kwargs):
        self.kv_compressor = kv_compressor if kv_compressor is not None else SeqKV()
        if not isinstance(self.kv_compressor, SeqKV):
            raise TypeError(f"kv_compressor must be a seqkv_edge.SeqKV, got {type(kv_compressor).__name__}")
        self.schedule_recorder: Optional[ScheduleRecorder] = None
        self.weight_repack = weight_repack
        with model_loading(weight_repack):
            super().__init__(*args, **kwargs)
        if self.kv_compressor.tokens == "hybrid":
            self.schedule_recorder = ScheduleRecorder(self.n_vocab())
        self.session_store = None
        if self.kv_compressor.store is not None:
            from .cache import SeqKVCache

            cache = SeqKVCache.from_config(self.kv_compressor, self)
            self.session_store = cache.store
            self.set_cache(cache)

    def close(self) -> None:
        if hasattr(self, "_stack"):  # construction may have stopped before llama_cpp.Llama.__init__ ran
            super().close()

    def eval(self, tokens):
        """``llama_cpp.Llama.eval``; with ``SeqKV(tokens="hybrid")`` the call is also recorded for replay."""
        if self.schedule_recorder is not None:
            self.schedule_recorder.before_eval(self.n_tokens, tokens, llama_api.logits_getter(self))
        super().eval(tokens)

    def save_session(self, path: Union[str, Path], progress: Progress = None) -> SessionInfo:
        """Save this context's session to ``path`` (atomic write); returns sizes and timings.

        With ``SeqKV(store=...)``, a plain name (no path separator, no ``.seqkv`` suffix) saves into the
        store, deduplicated against every other session there. ``progress(done, total)`` is called during
        long work (the one-token pass of ``tokens="model"``).
        """
        return self.kv_compressor.save(self, path, progress)

    def load_session(self, path: Union[str, Path], progress: Progress = None) -> SessionInfo:
        """Restore a session saved by ``save_session``; generation continues exactly where it stopped.

        Tokens-only sessions are recomputed: ``progress(done, total)`` is called as tokens are replayed and
        returning ``False`` cancels (``SessionCancelled``). Raises ``ModelMismatchError`` (other model, cache
        type, flash_attn setting or llama.cpp build, too small n_ctx) or ``CorruptDataError`` (truncated or
        damaged file); on any error the context is left as it was.
        """
        return self.kv_compressor.load(self, path, progress)

    def __getstate__(self):
        state = super().__getstate__()
        state["kv_compressor"] = self.kv_compressor.get_config()
        state["weight_repack"] = self.weight_repack
        return state

    def __setstate__(self, state):
        state = dict(state)
        state["kv_compressor"] = SeqKV.from_config(state.get("kv_compressor") or {})
        self.__init__(**state)
