"""The chunk files of an ``SQLiteStore``: one file per trie node version, written crash-safely.

Layout under the store directory::

    blobs/<xx>/<node id>.<version>   one node's chunk, never overwritten (xx: the id's low byte)
    tmp/                             chunks being written

A chunk is written to ``tmp/``, fsynced (when durable), then renamed to its final name; the caller
fsyncs the directories (``fsync_dir``) before committing the index rows that name the files.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Iterable

from ..checksum import crc32
from ..errors import CorruptDataError, StoreUnavailableError


class ChunkFiles:
    """Reads, writes and sweeps the chunk files below ``root``; ``stage`` is called with a stage
    name after each step of a write (crash tests stop the writer there)."""

    def __init__(self, root: Path, durable: bool, stage: Callable[[str], None]):
        self.root = Path(root)
        self.durable = durable
        self._stage = stage
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)

    def path(self, node_id: int, version: int) -> Path:
        return self.root / "blobs" / f"{node_id & 0xFF:02x}" / f"{node_id:016x}.{version}"

    def read(self, node_id: int, version: int, nbytes: int, crc: int) -> bytes:
        """A chunk's bytes, checked against the size and CRC-32 the index holds."""
        path = self.path(node_id, version)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptDataError(f"chunk file {path} of node {node_id} is missing") from None
        except OSError as error:
            raise StoreUnavailableError(f"cannot read chunk file {path}: {error}") from error
        if len(data) != nbytes or crc32(data) != crc:
            raise CorruptDataError(
                f"chunk file {path} of node {node_id}: {len(data)} bytes, crc {crc32(data):08x};"
                f" the index says {nbytes} bytes, crc {crc:08x}"
            )
        return data

    def write(self, node_id: int, version: int, payload: bytes, dirs: set) -> Path:
        """Write a chunk under its final name (through tmp/); adds its directory to ``dirs``."""
        final = self.path(node_id, version)
        if not final.parent.is_dir():
            final.parent.mkdir(exist_ok=True)
            dirs.add(final.parent.parent)  # the new folder's entry in blobs/ must reach the disk too
        temp = self.root / "tmp" / f"{uuid.uuid4().hex}.part"
        with open(temp, "wb") as handle:
            handle.write(payload)
            if self.durable:
                handle.flush()
                os.fsync(handle.fileno())
        self._stage("blob_written")
        os.replace(temp, final)
        self._stage("blob_renamed")
        dirs.add(final.parent)
        return final

    def remove_unreferenced(self, referenced: Iterable[tuple[int, int]]) -> int:
        """Delete every temporary file and every chunk file not among the (node id, version)
        pairs; call it under the index's write lock. Returns the number of files removed."""
        names = {f"{node_id:016x}.{version}" for node_id, version in referenced}
        removed = 0
        for temp in (self.root / "tmp").iterdir():
            temp.unlink(missing_ok=True)
            removed += 1
        for folder in (self.root / "blobs").iterdir():
            for blob in folder.iterdir():
                if blob.name not in names:
                    blob.unlink(missing_ok=True)
                    removed += 1
        return removed


def fsync_dir(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
