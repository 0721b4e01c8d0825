"""The session file format: a versioned, little-endian sequence of checksummed sections.

Layout (format versions 1 and 2; 2 only adds the SCHEDULE_RUNS section kind)::

    b"SQKV" u8 version u8 flags
    section*                 kind u8 | length uleb128 | payload | crc32(payload) u32
    end                      kind 0  | length 0       | crc32 of every section crc, u32

Section kinds are listed in :class:`Kind`. A reader refuses unknown versions, checks every
checksum, and treats a missing end marker as truncation. Writes are atomic (``fileio.atomic_writer``):
a uniquely named temporary file in the same directory is written, fsynced, then renamed over the target.
"""
from __future__ import annotations

import enum
import itertools
import json
import mmap
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

from ..checksum import crc32
from ..codecs.varint import read_varint, write_varint
from ..errors import CorruptDataError
from ..fileio import atomic_writer, start_writeback
from .meta_schema import SESSION_META
from .meta_schema import check as check_meta

MAGIC = b"SQKV"
FORMAT_VERSION = 2  # 2: hybrid schedules are run-length coded (SCHEDULE_RUNS); version 1 files still read
SUPPORTED_VERSIONS = (1, 2)
Buffer = Union[bytes, bytearray, memoryview]
_PARALLEL_CRC_BYTES = 1 << 22  # files with more payload bytes than this check their sections' CRCs in threads
_WRITEBACK_BYTES = 1 << 21  # written bytes that start their writeback to disk (while later sections are coded)


class Kind(enum.IntEnum):
    END = 0
    META = 1  # JSON: fingerprints, versions, codec configs, tensor layout
    TOKENS = 2  # coded token ids
    SKELETON = 3  # the state blob's non-tensor bytes (headers, cell metadata), coded
    KV = 4  # one coded KV tensor; order given by META["tensors"]
    HEADER = 5  # compact binary header of token-only sessions, instead of META
    SCHEDULE = 6  # the eval calls that built the context (hybrid tier), one entry per call (version 1)
    SCHEDULE_RUNS = 9  # the same, run-length coded (version 2: a generated answer is one run)
    MODEL_TOKENS = 7  # tokens coded with the model's own predictions
    FALLBACK = 8  # a portable copy of the tokens, for builds that cannot replay the model


@dataclass
class Container:
    """A parsed session file: its JSON meta and its sections in file order (payloads are views)."""

    version: int
    meta: dict  # the JSON META section; empty for files with a compact HEADER
    header: Optional[memoryview]  # the compact HEADER section, when the file has one
    sections: list[tuple[int, memoryview]] = field(default_factory=list)

    def payloads(self, kind: int) -> list[memoryview]:
        return [payload for k, payload in self.sections if k == kind]

    def payload(self, kind: int) -> memoryview:
        found = self.payloads(kind)
        if len(found) != 1:
            raise CorruptDataError(f"expected one {Kind(kind).name} section, found {len(found)}")
        return found[0]

    # what a restore asks of a file that may still be arriving (``streamed.StreamedContainer``): here all is in
    def arriving(self, kind: int, count: int) -> Sequence[memoryview]:
        """The ``count`` sections of ``kind``; CorruptDataError when the file holds another number."""
        found = self.payloads(kind)
        if len(found) != count:
            raise CorruptDataError(f"expected {count} {Kind(kind).name} sections, found {len(found)}")
        return found

    def complete(self) -> None:
        """Returns once the whole file is in and verified (here: at once)."""


def encode_meta(meta: dict) -> bytes:
    return json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()


def write_container(path: Union[str, Path], meta: Union[dict, bytes], sections: Iterable[tuple[int, Buffer]]) -> int:
    """Atomically write a session file; returns its size in bytes. ``sections`` may be an iterator yielding each
    section as it is coded: each is written when it comes, and its pages go to disk while the next are coded.

    ``meta`` is a JSON-safe dict (META section) or the bytes of a compact HEADER section.
    """
    first = (Kind.HEADER, meta) if isinstance(meta, (bytes, bytearray)) else (Kind.META, encode_meta(meta))
    crcs, synced = bytearray(), 0
    with atomic_writer(path) as f:
        f.write(MAGIC + bytes([FORMAT_VERSION, 0]))
        for kind, payload in itertools.chain([first], sections):  # sections may still be coding: written as they come
            crc = crc32(payload)
            f.write(bytes([kind]) + write_varint(len(payload)))
            f.write(payload)
            f.write(struct.pack("<I", crc))
            crcs += struct.pack("<I", crc)
            if f.tell() - synced >= _WRITEBACK_BYTES:
                f.flush()
                start_writeback(f.fileno(), synced, f.tell() - synced)
                synced = f.tell()
        f.write(bytes([Kind.END, 0]) + struct.pack("<I", crc32(crcs)))
        return f.tell()


def parse_container(data: Buffer, source: str = "session data") -> Container:
    """Parse and verify a session file held in memory (bytes, mmap or memoryview)."""
    buf = memoryview(data)
    version = file_version(buf, source)
    sections = list(walk_sections(buf, source))
    _check_crcs(sections, source)
    sections = [(kind, payload) for kind, payload, _, _ in sections]
    if not sections:
        raise CorruptDataError(f"{source} does not start with a META or HEADER section")
    meta, header = head_of(sections[0], source)
    return Container(version=version, meta=meta, header=header, sections=sections[1:])


def file_version(buf: memoryview, source: str) -> int:
    """The format version of a session file starting at ``buf`` (6 bytes or more), checked."""
    if len(buf) < 6 or bytes(buf[:4]) != MAGIC:
        raise CorruptDataError(f"{source} is not a seqkv session file (bad magic)")
    version = buf[4]
    if version not in SUPPORTED_VERSIONS:
        raise CorruptDataError(
            f"{source} has format version {version}; this seqkv_edge reads {SUPPORTED_VERSIONS}: upgrade seqkv_edge"
        )
    return version


def walk_sections(buf: memoryview, source: str, wait: Optional[Callable[[int], None]] = None) -> Iterator[tuple]:
    """(kind, payload, crc, offset) of each section of the whole file ``buf`` after its 6-byte head, in file order,
    CRCs not checked; then the end marker is checked. ``wait(n)``, when given, is called before any byte below
    ``n`` is read (a file still arriving)."""
    pos, crcs = 6, bytearray()
    while True:
        if pos >= len(buf):
            raise CorruptDataError(f"{source} is truncated: no end marker")
        if wait:
            wait(min(pos + 11, len(buf)))  # the kind and a length of up to 10 bytes
        kind = buf[pos]
        length, pos = read_varint(buf, pos + 1, source)
        if kind == Kind.END:
            if length != 0 or pos + 4 > len(buf):
                raise CorruptDataError(f"{source} has a damaged end marker")
            if wait:
                wait(pos + 4)
            (total,) = struct.unpack_from("<I", buf, pos)
            if total != crc32(crcs):
                raise CorruptDataError(f"{source}: section list checksum mismatch")
            if pos + 4 != len(buf):
                raise CorruptDataError(f"{source} has {len(buf) - pos - 4} trailing bytes after the end marker")
            return
        end = pos + length
        if end + 4 > len(buf):
            raise CorruptDataError(f"{source} is truncated inside a {kind_name(kind)} section")
        if wait:
            wait(end + 4)
        (crc,) = struct.unpack_from("<I", buf, end)
        crcs += struct.pack("<I", crc)
        yield kind, buf[pos:end], crc, pos
        pos = end + 4


def head_of(first: tuple[int, memoryview], source: str) -> tuple[dict, Optional[memoryview]]:
    """(meta, header) of a file whose first section is ``first`` (kind, payload): META parsed and checked, or the
    compact HEADER of a tokens-only file with an empty meta."""
    kind, payload = first
    if kind == Kind.HEADER:
        return {}, payload
    if kind != Kind.META:
        raise CorruptDataError(f"{source} does not start with a META or HEADER section")
    try:
        meta = json.loads(bytes(payload))
    except (ValueError, RecursionError) as exc:
        raise CorruptDataError(f"{source}: META section is not valid JSON ({type(exc).__name__}: {exc})") from None
    check_meta(meta, SESSION_META, source)
    return meta, None


def _check_crcs(sections: list[tuple], source: str) -> None:
    """Each (kind, payload, crc, offset) section's payload matches its CRC; large files are checked in threads
    (zlib releases the GIL), the first damaged section in file order is reported."""
    def damaged(section) -> bool:
        return crc32(section[1]) != section[2]

    n_threads = min(os.cpu_count() or 1, len(sections))
    if n_threads > 1 and sum(len(s[1]) for s in sections) > _PARALLEL_CRC_BYTES:
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            bad = list(pool.map(damaged, sections))
    else:
        bad = [damaged(section) for section in sections]
    for (kind, _, _, offset), is_bad in zip(sections, bad):
        if is_bad:
            raise damaged_section(kind, offset, source)


def damaged_section(kind: int, offset: int, source: str) -> CorruptDataError:
    """The error for a section whose payload fails its CRC."""
    return CorruptDataError(f"{source}: checksum mismatch in a {kind_name(kind)} section at byte {offset}")


def kind_name(kind: int) -> str:
    try:
        return Kind(kind).name
    except ValueError:
        return f"kind-{kind}"


def read_container(path: Union[str, Path], buffer: Optional[Callable[[int], Buffer]] = None) -> Container:
    """Map a session file and parse it (section payloads are views into the mapping); with ``buffer``
    (``buffer(size)``: a writable buffer of ``size`` bytes, e.g. one reused between restores) read it there instead,
    with one ``readinto``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no session file at {path}")
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CorruptDataError(f"{path} is empty")
        if buffer is None:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            data = memoryview(buffer(size)).cast("B")[:size]
            if f.readinto(data) != size:
                raise CorruptDataError(f"{path} changed size while it was read")
    return parse_container(data, source=str(path))
