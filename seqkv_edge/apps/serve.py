"""``seqkv serve``: llama-cpp-python's OpenAI-compatible server with the SeqKV store as prompt cache.

The app is llama-cpp-python's own (``llama_cpp.server.app.create_app``: ``/v1/chat/completions``,
``/v1/completions``, ...). Its model gets a :class:`~seqkv_edge.cache.SeqKVCache` over a session
store instead of the RAM/disk caches: every answered conversation is stored as lossless-coded KV
chunks in a prefix trie, so a conversation's next turn restores its history from the store (also
after a server restart) and conversations sharing a system prompt or document store it once.

``GET /seqkv/stats`` reports the cache's hits, misses and stores and the store's size.

    $ seqkv serve --store ~/.cache/seqkv_edge/server-store --port 8000
    $ python -c "import openai; c = openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='-'); ..."

Needs the ``server`` extra: ``pip install "seqkv_edge[server]"``.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from ..errors import SeqKVError
from ..hardware import model_loading
from ..models import seqkv_home

log = logging.getLogger(__name__)

STATS_PATH = "/seqkv/stats"


def default_store() -> str:
    return str(seqkv_home() / "server-store")


def attach_cache(llm, store, budget_bytes=None):
    """Install a :class:`SeqKVCache` over ``store`` as ``llm``'s prompt cache; returns it."""
    from ..cache import SeqKVCache

    cache = SeqKVCache(store, llm, capacity_bytes=budget_bytes)
    llm.set_cache(cache)
    return cache


def create_app(model_path: str, store_location: str, *, budget_bytes=None, n_ctx: int = 4096,
               n_threads=None, chat_format=None, model_alias=None, verbose: bool = False):
    """llama-cpp-python's FastAPI app serving ``model_path``, its prompt cache in the store at ``store_location``.

    Returns ``(app, server)``; ``server.cache`` counts hits, ``server.close()`` closes the store.
    """
    try:
        from llama_cpp.server import app as server_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as error:
        raise SeqKVError(f"seqkv serve needs llama-cpp-python's server extra ({error}); install it with: "
                         'pip install "seqkv_edge[server]"') from None
    from ..sessions.named import open_session_store

    options = {"n_threads": n_threads} if n_threads else {}
    model_settings = ModelSettings(model=model_path, model_alias=model_alias or Path(model_path).stem, n_ctx=n_ctx,
                                   chat_format=chat_format, cache=False, verbose=verbose, **options)
    with model_loading():  # the proxy loads its model here, as a plain llama_cpp.Llama
        app = server_app.create_app(server_settings=ServerSettings(), model_settings=[model_settings])
    server = _Server(open_session_store(store_location, budget_bytes=budget_bytes, n_threads=n_threads),
                     budget_bytes)
    server.install(server_app._llama_proxy)
    if not server_app._llama_proxy().metadata.get("tokenizer.chat_template") and not chat_format:
        log.warning("%s has no chat template (a base model): /v1/chat/completions answers may be empty; use "
                    "/v1/completions, an instruct model, or --chat-format", model_path)

    @app.get(STATS_PATH)
    def seqkv_stats() -> dict:
        return server.stats()

    return app, server


class _Server:
    """The store and the cache of the served model (re-attached if the proxy reloads the model)."""

    def __init__(self, store, budget_bytes):
        self.store = store
        self.budget_bytes = budget_bytes
        self.cache = None

    def install(self, proxy) -> None:
        load = proxy.load_llama_from_model_settings

        def load_with_cache(settings):
            with model_loading():
                llm = load(settings)
            self.cache = attach_cache(llm, self.store, self.budget_bytes)
            return llm

        proxy.load_llama_from_model_settings = load_with_cache
        self.cache = attach_cache(proxy(), self.store, self.budget_bytes)

    def stats(self) -> dict:
        store = self.store.stats()
        return {"cache": asdict(self.cache.counters) if self.cache else {},
                "store": {"location": str(getattr(self.store, "path", None) or getattr(self.store, "url", "")),
                          **asdict(store), "budget_bytes": self.budget_bytes}}

    def close(self) -> None:
        self.store.close()
