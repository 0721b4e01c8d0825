"""Bit-exact compression of llama.cpp KV tensors (codec id ``kv_lossless``).

Every channel (one coordinate of the K or V vectors) is coded token after token. A predictor
(a moving average, rotated for RoPE channel pairs, which it detects) gives the expected value of
each element; with the channel's residual scale it selects one of a few hundred shared
Gaussian-shaped rANS tables, and one rANS step codes the element's sign, exponent and top
mantissa bits together with its raw low mantissa bits. Groups of four channels whose moving
predictor would save less than a bit per value get a constant one instead, which decodes about
twice as fast for a small loss of ratio. The C core is ``native/kvcodec.c``;
the stream format (version 1) is described there and frozen by ``tests/fixtures/kv_lossless_v1_*``.

Supported ggml types: f32 (0), f16 (1), q4_0 (2), q8_0 (8), bf16 (30). A tensor is a uint8 array,
token-major ``[n_tokens, row_bytes]`` or (not for q4_0 / q8_0) channel-major
``[n_channels, n_tokens * element_size]`` (llama.cpp's transposed V).

>>> import numpy as np
>>> from seqkv_edge.codecs.kv_lossless import KVLosslessCodec, GGML_F16
>>> codec = KVLosslessCodec()
>>> kv = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float16).view(np.uint8)
>>> blob = codec.encode_tensor(kv, GGML_F16, True, 8)
>>> out = codec.decode_tensor(blob, GGML_F16, True, 8, np.empty_like(kv))
>>> bool((out == kv).all())
True
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Iterable, Iterator, Sequence

import numpy as np

from .. import native
from ..errors import CorruptDataError, UnsupportedStateError
from .base import StateCodec
from .registry import register_codec

logger = logging.getLogger(__name__)

GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0, GGML_BF16 = 0, 1, 2, 8, 30
SUPPORTED_TYPES = {GGML_F32: "f32", GGML_F16: "f16", GGML_Q4_0: "q4_0", GGML_Q8_0: "q8_0", GGML_BF16: "bf16"}
BLOCK_TYPES = {GGML_Q4_0, GGML_Q8_0}
ELEMENT_SIZE = {GGML_F32: 4, GGML_F16: 2, GGML_BF16: 2}
FORMAT_VERSION = 1


def _check_tensor(data: np.ndarray, ggml_type: int, token_major: bool, n_channels: int) -> np.ndarray:
    """The tensor as a C-contiguous 2-D uint8 array whose shape fits its description."""
    if ggml_type not in SUPPORTED_TYPES:
        raise UnsupportedStateError(
            f"kv_lossless cannot code ggml type {ggml_type}; supported: "
            + ", ".join(f"{name} ({t})" for t, name in SUPPORTED_TYPES.items())
        )
    if not token_major and ggml_type in BLOCK_TYPES:
        raise UnsupportedStateError(f"{SUPPORTED_TYPES[ggml_type]} tensors are token-major only (llama.cpp never "
                                    "transposes block-quantized V)")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 array, got {data.dtype} of shape {data.shape}")
    if token_major:
        row = native.kv_row_bytes(ggml_type, n_channels)
        if data.shape[1] != row:
            raise ValueError(f"a token-major {SUPPORTED_TYPES[ggml_type]} row of {n_channels} channels has "
                             f"{row} bytes, got shape {data.shape}")
    elif data.shape[0] != n_channels or data.shape[1] % ELEMENT_SIZE[ggml_type]:
        raise ValueError(f"a channel-major {SUPPORTED_TYPES[ggml_type]} tensor of {n_channels} channels "
                         f"has shape [{n_channels}, n_tokens * {ELEMENT_SIZE[ggml_type]}], got {data.shape}")
    return np.ascontiguousarray(data)


@register_codec
class KVLosslessCodec(StateCodec):
    """Lossless KV tensor codec: ``encode_state`` / ``decode_state`` code a whole state, ``encode_many`` /
    ``decode_many`` any tensors, both in parallel threads (one tensor per thread).

    pair_offset: -1 detects RoPE channel pairs (c, c + offset), 0 disables pairing, p > 0 forces
    offset p (e.g. head_dim / 2 for NEOX-style rope). n_threads: threads of the *_many methods
    (default: os.cpu_count()). Neither changes the stream format; decoding needs neither.
    """

    codec_id = "kv_lossless"

    def __init__(self, pair_offset: int = -1, n_threads: int | None = None, format_version: int = FORMAT_VERSION):
        if format_version != FORMAT_VERSION:
            raise ValueError(f"kv_lossless format version {format_version} is unknown (this build writes "
                             f"and reads version {FORMAT_VERSION})")
        if not -1 <= pair_offset <= 65535:
            raise ValueError(f"pair_offset must be -1 (detect), 0 or a channel offset, got {pair_offset}")
        if n_threads is not None and n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        self.pair_offset = int(pair_offset)
        self.n_threads = n_threads

    def get_config(self) -> dict:
        return {"id": self.codec_id, "format_version": FORMAT_VERSION, "pair_offset": self.pair_offset}

    # ---- one tensor ----
    def encode_tensor(self, data: np.ndarray, ggml_type: int, token_major: bool, n_channels: int) -> bytes:
        """Code one tensor (uint8 array, see the module docstring); returns a self-delimiting stream."""
        data = _check_tensor(data, ggml_type, token_major, n_channels)
        return native.kv_encode(data, ggml_type, token_major, n_channels, self.pair_offset)

    def decode_tensor(self, buf, ggml_type: int, token_major: bool, n_channels: int, out: np.ndarray) -> np.ndarray:
        """Decode a stream into ``out`` (preallocated with the tensor's shape); returns ``out``.

        Raises CorruptDataError when the stream is damaged or describes another tensor.
        """
        _check_tensor(out, ggml_type, token_major, n_channels)
        if not (out.flags.c_contiguous and out.flags.writeable):
            raise ValueError("out must be a writable, C-contiguous uint8 array")
        return native.kv_decode(buf, ggml_type, token_major, n_channels, out)

    # ---- many tensors, in parallel ----
    def _max_threads(self) -> int:
        return self.n_threads or os.cpu_count() or 1

    def _threads(self, n_items: int) -> int:
        return min(self._max_threads(), max(n_items, 1))

    def _pool_map(self, fn, items: Sequence) -> Iterator:
        """``fn`` of each item, in the kept pool; the results in order, each as soon as it and those before are in
        (``close()`` the iterator to cancel the calls not started)."""
        return map(fn, items) if self._threads(len(items)) == 1 else _pool(self._max_threads()).map(fn, items)

    def _map_all(self, fn, items: Iterable, n_items: int) -> list:
        """``fn`` of each of the ``n_items`` items, in the kept pool, taking each item as it comes (a payload of a file
        still being read); returns when every call has ended. On a failure the calls not started are cancelled and
        the running ones waited for, then it is raised: nothing writes into the caller's buffers afterwards."""
        if self._threads(n_items) == 1:
            return [fn(item) for item in items]
        pool, futures = _pool(self._max_threads()), []  # one pool per setting; it starts at most n_items threads
        try:
            for item in items:
                futures.append(pool.submit(fn, item))
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)
            raise

    def encode_many(self, items: Sequence[tuple]) -> list[bytes]:
        """Code (data, ggml_type, token_major, n_channels) tuples in parallel; streams in order."""
        return self._map_all(lambda item: self.encode_tensor(*item), items, len(items))

    def decode_many(self, items: Sequence[tuple]) -> list[np.ndarray]:
        """Decode (buf, ggml_type, token_major, n_channels, out) tuples in parallel; the outs in order."""
        return self._map_all(lambda item: self.decode_tensor(*item), items, len(items))

    # ---- whole states (the StateCodec contract) ----
    def encode_state(self, state, rope: dict | None = None, profile=None) -> list[bytes]:
        """One stream per tensor of ``state``; ``rope`` and ``profile`` are not needed (bit-exact coding)."""
        return list(self.encode_state_iter(state))

    def encode_state_iter(self, state, rope: dict | None = None, profile=None) -> Iterator[bytes]:
        """The streams of :meth:`encode_state`, each as soon as it and those before it are coded."""
        items = [(t.data, t.ggml_type.id, t.token_major, t.n_channels) for t in state.tensors()]
        return self._pool_map(lambda item: self.encode_tensor(*item), items)

    def decode_state(self, payloads, tensors, positions, rope: dict | None = None, profile=None) -> None:
        """Decode ``payloads`` into the views ``tensors``; ``positions``, ``rope`` and ``profile`` are not needed."""
        if len(payloads) != len(tensors):
            raise CorruptDataError(f"decoding a lossless KV state: {len(payloads)} streams for {len(tensors)} tensors")
        items = ((c, t.ggml_type.id, t.token_major, t.n_channels, t.data) for c, t in zip(payloads, tensors))
        self._map_all(lambda item: self.decode_tensor(*item), items, len(tensors))

    # ---- one stream, described by its own header ----
    def decode_stream(self, buf) -> np.ndarray:
        """Decode a stream into a new array; its header gives the type, layout and shape."""
        ggml_type, token_major, n_channels, n_tokens = native.kv_stream_info(buf)
        if ggml_type not in SUPPORTED_TYPES:
            raise UnsupportedStateError(f"the stream holds ggml type {ggml_type}, which kv_lossless cannot decode")
        shape = ((n_tokens, native.kv_row_bytes(ggml_type, n_channels)) if token_major
                 else (n_channels, n_tokens * ELEMENT_SIZE.get(ggml_type, 1)))
        return self.decode_tensor(buf, ggml_type, token_major, n_channels, np.empty(shape, np.uint8))


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(n_threads: int) -> ThreadPoolExecutor:
    """The process's pool of up to ``n_threads`` coding threads: kept, so each thread keeps its workspace (context
    tables built once per process, not once per save or restore) and no restore waits for threads to start."""
    with _POOLS_LOCK:
        pool = _POOLS.get(n_threads)
        if pool is None:
            pool = _POOLS[n_threads] = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="kv_lossless")
        return pool


def _forget_pools() -> None:
    """In a forked child: the pools' threads stayed in the parent, so the child starts its own."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def stream_size(buf) -> int:
    """Size of the kv_lossless stream at the start of ``buf`` (streams are self-delimiting)."""
    return native.kv_stream_size(buf)
