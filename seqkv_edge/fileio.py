"""Whole-file writes that a crash cannot leave half done, and that threads and processes can race."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


@contextmanager
def atomic_writer(path) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content to: a unique temporary file in the same folder (so
    concurrent writers never share one), flushed to disk, given mode 0644 and renamed over ``path`` when
    the block ends; the folder is then fsynced so the rename survives a power cut. Readers see the old
    file or the new one, never a part; if the block fails, ``path`` is untouched. Creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(path.parent)


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_writer`."""
    with atomic_writer(path) as f:
        f.write(data)


def fsync_dir(directory) -> None:
    """Make a folder's entries (a rename, a new file) durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
