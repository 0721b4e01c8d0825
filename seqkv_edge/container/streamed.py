"""A session file read by a thread of its own while its sections are decoded (``open_streamed``).

The reader fills a buffer in chunks, walks the sections as their bytes come in and releases each one once its CRC
holds, so a restore decodes the first KV tensors while the last are still on their way from disk. A consumer only
ever sees verified sections; ``complete()`` waits for the end marker, and for the section counts the consumer
expected, before the restore touches the context.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from ..checksum import crc32
from ..errors import CorruptDataError
from .session_file import Kind, damaged_section, file_version, head_of, walk_sections

CHUNK_BYTES = 1 << 20  # one read: small enough that decoding starts early, large enough to cost no time

__all__ = ["StreamedContainer", "open_streamed"]


class _Stopped(Exception):
    """The consumer left before the file was read."""


class StreamedContainer:
    """The parts of ``session_file.Container`` a restore uses, over a file still being read: ``meta``, ``header``
    and ``version`` at once; ``arriving(kind, count)`` and ``payload(kind)`` section by section as they come;
    ``payloads(kind)`` and ``sections`` once the whole file is in."""

    def __init__(self, f, data: memoryview, source: str):
        self._f, self._data, self._source = f, data, source
        self._filled, self._stop = 0, False
        self._cond = threading.Condition()
        self._got: list[tuple[int, memoryview]] = []  # verified sections, in file order
        self._done, self._error = False, None
        self._counts: dict[int, int] = {}  # kind -> the number of sections the consumer expects
        self._head_read = False
        self._thread = threading.Thread(target=self._read, name="seqkv-read", daemon=True)
        self._thread.start()
        try:
            self.version = self._version_ready()
            self.meta, self.header = head_of(self._at(0) or (Kind.END, None), source)
        except BaseException:
            self.close()
            raise

    # ---- the reading thread
    def _fill_to(self, n: int) -> None:
        while self._filled < n:
            if self._stop:
                raise _Stopped
            got = self._f.readinto(self._data[self._filled:min(self._filled + CHUNK_BYTES, len(self._data))])
            if not got:
                raise CorruptDataError(f"{self._source} changed size while it was read")
            self._filled += got

    def _read(self) -> None:
        try:
            self._fill_to(min(6, len(self._data)))
            with self._cond:
                self._head_read = True
                self._cond.notify_all()
            file_version(self._data, self._source)
            for kind, payload, crc, offset in walk_sections(self._data, self._source, wait=self._fill_to):
                if crc32(payload) != crc:
                    raise damaged_section(kind, offset, self._source)
                with self._cond:
                    self._got.append((kind, payload))
                    self._cond.notify_all()
            error = None
        except _Stopped:
            error = None
        except BaseException as exc:  # handed to the consumer
            error = exc
        with self._cond:
            self._done, self._error = True, error
            self._cond.notify_all()

    # ---- the consumer
    def _version_ready(self) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self._head_read or self._done)
        if not self._head_read:
            raise self._error
        return file_version(self._data, self._source)

    def _at(self, i: int) -> Optional[tuple[int, memoryview]]:
        """Section ``i`` once verified; None when the file ended before it. Raises what the reader met."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._got) > i or self._done)
            if i < len(self._got):
                return self._got[i]
            if self._error is not None:
                raise self._error
            return None

    def _of_kind(self, kind: int) -> Iterator[memoryview]:
        i = 1  # after the META or HEADER section, as Container.sections
        while (section := self._at(i)) is not None:
            if section[0] == kind:
                yield section[1]
            i += 1

    def arriving(self, kind: int, count: int) -> Sequence[memoryview]:
        """The ``count`` sections of ``kind``, each as soon as it is in (``complete()`` checks the count)."""
        self._counts[kind] = count
        return _Arriving(self._of_kind(kind), count, f"{self._source}: expected {count} {Kind(kind).name} sections")

    def payload(self, kind: int) -> memoryview:
        """The section of ``kind`` once it is in (``complete()`` checks that it is the only one)."""
        self._counts[kind] = 1
        found = next(self._of_kind(kind), None)
        if found is None:
            raise CorruptDataError(f"expected one {Kind(kind).name} section, found 0")
        if self._done:  # all in already: as strict as Container.payload now
            self.complete()
        return found

    def complete(self) -> None:
        """Wait for the whole file; CorruptDataError if it is damaged or holds other counts than were expected."""
        self._at(1 << 62)
        for kind, count in self._counts.items():
            found = sum(k == kind for k, _ in self._got[1:])
            if found != count:
                raise CorruptDataError(f"{self._source}: expected {count} {Kind(kind).name} sections, found {found}")

    @property
    def sections(self) -> list[tuple[int, memoryview]]:
        self.complete()
        return self._got[1:]

    def payloads(self, kind: int) -> list[memoryview]:
        return [payload for k, payload in self.sections if k == kind]

    def close(self) -> None:
        """Stop reading (a consumer that failed early) and wait for the reader: the buffer is free again."""
        self._stop = True
        self._thread.join()


class _Arriving(Sequence):
    """A sequence of known length whose items come from an iterator as they are asked for."""

    def __init__(self, source: Iterator, count: int, short: str):
        self._source, self._count, self._short, self._items = source, count, short, []

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._count))]
        if not -self._count <= i < self._count:
            raise IndexError(i)
        i %= self._count
        while len(self._items) <= i:
            item = next(self._source, None)
            if item is None:
                raise CorruptDataError(f"{self._short}, found {len(self._items)}")
            self._items.append(item)
        return self._items[i]


@contextmanager
def open_streamed(path, buffer: Callable[[int], memoryview]) -> Iterator[StreamedContainer]:
    """Read the session file ``path`` into ``buffer(size)`` in a thread while the block decodes it; the reader is
    stopped and joined when the block ends, however it ends."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no session file at {path}")
    f = open(path, "rb", buffering=0)
    try:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CorruptDataError(f"{path} is empty")
        container = StreamedContainer(f, memoryview(buffer(size)).cast("B")[:size], str(path))
    except BaseException:
        f.close()
        raise
    try:
        yield container
    finally:
        container.close()
        f.close()
