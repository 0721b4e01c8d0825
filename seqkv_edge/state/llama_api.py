"""The one module that reaches into llama-cpp-python beyond its public ``Llama`` API (its ``_internals``, the
context object behind ``Llama._ctx``, the ``_requires_eval`` flag). Everything else goes through here or through
the C API bindings (``llama_cpp.llama_cpp``), so a llama-cpp-python upgrade is checked in one place."""
from __future__ import annotations

from contextlib import closing, contextmanager

__all__ = ["batch", "clear_cells", "logits", "mark_logits_stale", "scratch_context", "state_size", "truncate"]


def logits(llm):
    """A ctypes float pointer to the logits of the last evaluated token (read in place, n_vocab floats)."""
    return llm._ctx.get_logits()


def logits_getter(llm):
    """A callable returning :func:`logits` of ``llm`` (for recorders that read them at each eval)."""
    return llm._ctx.get_logits


def truncate(llm, n_tokens: int) -> None:
    """Drop every cell from position ``n_tokens`` on (all sequences) and make the Llama track ``n_tokens``."""
    llm._ctx.kv_cache_seq_rm(-1, n_tokens, -1)
    llm.n_tokens = n_tokens


def clear_cells(llm) -> None:
    """Drop every cell of every sequence (the Llama's token count is the caller's to set)."""
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)


def mark_logits_stale(llm) -> None:
    """No logits are held for the current tokens: the next ``generate()`` evaluates the last token again."""
    llm._requires_eval = True


def state_size(llm, seq_id: int = 0) -> int:
    """Bytes of llama.cpp's own sequence state of ``llm``."""
    from llama_cpp import llama_cpp as lib

    return int(lib.llama_state_seq_get_size(llm.ctx, seq_id))


@contextmanager
def batch(n_tokens: int):
    """A llama.cpp batch of up to ``n_tokens`` tokens (``set_batch(tokens, n_past, logits_all)``; ``.batch`` is
    the C struct for ``llama_decode``)."""
    from llama_cpp._internals import LlamaBatch

    with closing(LlamaBatch(n_tokens=n_tokens, embd=0, n_seq_max=1, verbose=False)) as made:
        yield made


@contextmanager
def scratch_context(llm):
    """A second context on ``llm``'s model with its parameters (``decode(batch)``, ``get_logits()``), freed on exit."""
    from llama_cpp._internals import LlamaContext

    with closing(LlamaContext(model=llm._model, params=llm.context_params, verbose=False)) as ctx:
        yield ctx
