"""The one way a session's tokens are evaluated in batches (restores, replays, the chat, benchmarks), and the one
progress rule: ``progress(done, total)`` after each batch, ``False`` cancels (:class:`SessionCancelled`).

>>> seen = []
>>> report(lambda done, total: seen.append((done, total)), 3, 10); seen
[(3, 10)]
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from ..errors import SessionCancelled

Progress = Optional[Callable[[int, int], Optional[bool]]]

__all__ = ["Progress", "bar", "prefill", "report"]


def report(progress: Progress, done: int, total: int) -> None:
    """Tell ``progress`` how far the work is; a ``False`` answer cancels it."""
    if progress is not None and progress(done, total) is False:
        raise SessionCancelled(f"cancelled after {done} of {total} tokens")


def bar(desc: str, min_tokens: int = 0, **tqdm_options) -> Callable[[int, int], None]:
    """A progress callback drawing a tqdm bar (shown from ``min_tokens`` tokens up); ``.close()`` it when done."""
    from tqdm import tqdm

    state = {"bar": None}

    def update(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = tqdm(total=total, desc=desc, unit="tok", leave=False, disable=total < min_tokens,
                                **tqdm_options)
        state["bar"].update(done - state["bar"].n)

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    update.close = close
    return update


def prefill(llm, tokens, progress: Progress = None, desc: str | None = None) -> float:
    """Evaluate ``tokens`` in ``n_batch`` chunks (the schedule ``Llama.eval`` uses); returns the seconds taken.
    ``desc`` (without ``progress``) draws a progress bar so labelled."""
    tokens = [int(t) for t in tokens]
    drawn = bar(desc) if progress is None and desc is not None else None
    start = time.perf_counter()
    try:
        for i in range(0, len(tokens), llm.n_batch):
            llm.eval(tokens[i:i + llm.n_batch])
            report(progress or drawn, min(i + llm.n_batch, len(tokens)), len(tokens))
    finally:
        if drawn is not None:
            drawn.close()
    return time.perf_counter() - start
