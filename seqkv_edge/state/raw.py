"""llama.cpp's own uncompressed session path, the yardstick of every save and restore: the raw sequence state
written to a file (``llama_state_seq_get_data``, write, fsync) and read back (one ``readinto``,
``llama_state_seq_set_data``), as llama-server's slot save and restore do. Buffers can be reused between calls.

>>> buffer = bytearray()                                         # doctest: +SKIP
>>> raw_save(llm.ctx, "slot.bin", buffer)                        # doctest: +SKIP
24600600
>>> raw_restore(fresh.ctx, "slot.bin", buffer)                   # doctest: +SKIP
24600600
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from .blob import read_seq_state, write_seq_state

__all__ = ["raw_restore", "raw_save"]


def _sized(buffer: bytearray | None, size: int) -> bytearray:
    """``buffer`` grown in place to at least ``size`` bytes (a new one when None)."""
    if buffer is None:
        return bytearray(size)
    if len(buffer) < size:
        buffer.extend(bytes(size - len(buffer)))
    return buffer


def raw_save(ctx, path: Union[str, Path], buffer: bytearray | None = None, seq_id: int = 0) -> int:
    """Write sequence ``seq_id``'s raw state to ``path`` and fsync it; returns its size. ``buffer`` (reused
    when given) receives the state first."""
    from llama_cpp import llama_cpp as lib

    size = int(lib.llama_state_seq_get_size(ctx, seq_id))
    blob = read_seq_state(ctx, seq_id, out=_sized(buffer, size) if buffer is not None else None)
    with open(path, "wb", buffering=0) as f:
        f.write(blob)
        os.fsync(f.fileno())
    return len(blob)


def raw_restore(ctx, path: Union[str, Path], buffer: bytearray | None = None, seq_id: int = 0) -> int:
    """Read a raw state file with one ``readinto`` (into ``buffer`` when given) and set it into sequence
    ``seq_id``; returns its size."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        view = memoryview(_sized(buffer, size))[:size]
        got = f.readinto(view)
    if got != size:
        raise OSError(f"reading {path}: {got} of {size} bytes")
    write_seq_state(ctx, view, seq_id)
    return size
