"""The segment coder's format 2 as WebGPU compute shaders (``native/segcode.wgsl`` decodes,
``native/segcode_encode.wgsl`` encodes), run through wgpu.

wgpu runs the shaders on Metal on macOS and on Vulkan elsewhere (on Linux without a GPU, Mesa's software Vulkan,
lavapipe, which is how CI tests them). One shader invocation codes one segment, as one CUDA thread does: the
shaders are ``segc2_decode_block`` and ``segc2_encode_block`` of ``native/segcode_core.h`` in WGSL, integer
arithmetic only, so they give the CPU coder's indices and bytes. Around them the host does what needs 64-bit or
float arithmetic, or a whole tensor: the C core parses a stream (:func:`segcode.segment_offsets`), fits the models
of one to be written (:func:`segcode.fit_models`), quantizes and dequantizes (:func:`segcode.quantize`,
:func:`segcode.dequantize`) and builds each channel's coding table (:func:`segcode.model_tables`,
:func:`segcode.stream_tables`: ``segc2_model``).

>>> import numpy as np
>>> q = np.arange(-300, 300, dtype=np.int32).reshape(20, 30)
>>> coder = WgpuSegcode() if adapter_available() else None
>>> coder is None or bool((coder.decode(segcode.encode(q, format=2), 20, 30) == q).all())
True
>>> coder is None or coder.encode(q) == segcode.encode(q, format=2)
True
"""
from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import CorruptDataError
from . import segcode

__all__ = ["ENCODE_SHADER", "SHADER", "WgpuSegcode", "adapter_available"]

def _shader(name: str) -> Path:
    """A shader shipped in the package (setup.py copies it there), or in native/ of a checkout."""
    packaged = resources.files(__package__) / name
    return Path(str(packaged)) if packaged.is_file() else Path(__file__).resolve().parents[2] / "native" / name


SHADER, ENCODE_SHADER = _shader("segcode.wgsl"), _shader("segcode_encode.wgsl")
COMMON = _shader("segcode_common.wgsl")  # the constants and the dispatch's shape both shaders use, put before each

CELLS, CHANNELS = 2048, 64  # SEGC2_CELLS, SEGC2_CHANNELS of segcode_core.h
MAX_WORKGROUPS = 65535  # per dispatch dimension, WebGPU's default limit
GROUPS_PER_STEP, LANES, PROGRESS_WORDS, DONE = 1024, 16, 20, 2  # as in the shaders
ENCODE_PROGRESS_WORDS, WORDS_AT, EMPTY = 18, 17, 3  # as in segcode_encode.wgsl
WORD_BYTES_PER_VALUE = 6  # SEGC2_SEGMENT_BOUND: at most three u16 words a value, the states apart
def _device():
    """wgpu's adapter (a high-performance one when there are several) and a device with its storage limits."""
    import wgpu

    adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    if adapter is None:
        raise RuntimeError("wgpu finds no adapter")
    limits = {name: adapter.limits[name] for name in ("max-storage-buffer-binding-size", "max-buffer-size")}
    return adapter, adapter.request_device_sync(required_limits=limits)


def adapter_available() -> bool:
    """Whether wgpu is installed and finds an adapter (Metal, Vulkan, D3D12)."""
    try:
        _device()
    except (ImportError, RuntimeError):
        return False
    return True


class WgpuSegcode:
    """Format 2's decoder and encoder on wgpu's adapter; the pipelines are built once, calls are serialised."""

    def __init__(self):
        import wgpu

        self._wgpu = wgpu
        self.adapter, self.device = _device()
        common = COMMON.read_text()
        self.pipeline, self.encoder = (self.device.create_compute_pipeline(
            layout="auto", compute={"module": self.device.create_shader_module(code=common + path.read_text()),
                                    "entry_point": entry}) for path, entry in ((SHADER, "decode_segments"),
                                                                              (ENCODE_SHADER, "encode_segments")))
        self.max_binding = min(self.device.limits["max-storage-buffer-binding-size"],
                               self.device.limits["max-buffer-size"])
        self._lock = threading.Lock()

    def encode(self, q, threads: int | None = None) -> bytes:
        """Code an int32 [n_cells, n_channels] matrix as format 2: the bytes of ``segcode.encode(q, format=2)``.
        The C core fits the models (on ``threads``), the shader codes the segments."""
        head, k, u = segcode.fit_models(q, threads)  # ValueError on an empty matrix or an index past MAX_ABS
        q = np.ascontiguousarray(q, np.int32)
        n_cells, n_channels = q.shape
        tables = segcode.model_tables(k, u)
        n_chblocks = -(-n_channels // CHANNELS)
        heights = np.minimum(n_cells - np.arange(0, n_cells, CELLS), CELLS)
        widths = np.minimum(n_channels - np.arange(0, n_channels, CHANNELS), CHANNELS)
        region_words = -(-WORD_BYTES_PER_VALUE * np.outer(heights, widths).ravel() // 4)
        ends = np.concatenate([[0], np.cumsum(region_words)])

        def fits(block0: int, block1: int) -> bool:
            n_seg = (block1 - block0) * n_chblocks
            words = ends[block1 * n_chblocks] - ends[block0 * n_chblocks]
            return (max(4 * words, (block1 - block0) * CELLS * n_channels * 4) <= self.max_binding
                    and n_seg <= MAX_WORKGROUPS)

        pieces = []
        with self._lock:
            for block0, block1 in self._runs(n_cells, n_channels, fits):
                pieces += self._encode_run(q[block0 * CELLS:block1 * CELLS], tables,
                                           region_words[block0 * n_chblocks:block1 * n_chblocks], n_chblocks)
        sizes = np.array([len(body) for body in pieces], "<u4")
        return b"".join([head, sizes.tobytes(), *pieces])

    def decode(self, buf, n_cells: int, n_channels: int) -> np.ndarray:
        """Decode a format-2 stream of an [n_cells, n_channels] matrix to int32 (as :func:`segcode.decode`)."""
        stream = np.frombuffer(buf, np.uint8)
        offsets = segcode.segment_offsets(stream, n_cells, n_channels).astype(np.int64)
        if stream[4] != 2:
            raise CorruptDataError(f"decoding a {n_cells} x {n_channels} segment-coded matrix on wgpu: "
                                   f"the stream is format {stream[4]}; this decoder reads format 2")
        tables = segcode.stream_tables(stream, n_cells, n_channels)
        out = np.empty((n_cells, n_channels), np.int32)
        n_chblocks = -(-n_channels // CHANNELS)

        def fits(block0: int, block1: int) -> bool:
            body_bytes = offsets[block1 * n_chblocks] - offsets[block0 * n_chblocks]
            return (max(body_bytes + 4, (block1 - block0) * CELLS * n_channels * 4) <= self.max_binding
                    and (block1 - block0) * n_chblocks <= MAX_WORKGROUPS)

        with self._lock:
            for block0, block1 in self._runs(n_cells, n_channels, fits):
                failed = self._decode_run(stream, offsets[block0 * n_chblocks:block1 * n_chblocks + 1], tables,
                                          out[block0 * CELLS:block1 * CELLS], n_chblocks)
                if failed.any():
                    seg = block0 * n_chblocks + int(np.flatnonzero(failed)[0])
                    raise CorruptDataError(f"decoding a {n_cells} x {n_channels} segment-coded matrix on wgpu: "
                                           f"segment {seg} is truncated or damaged")
        return out

    def decode_f32(self, buf, n_cells: int, n_channels: int, step) -> np.ndarray:
        """Decode and dequantize (x = index * step[channel], the C core's multiply)."""
        return segcode.dequantize(self.decode(buf, n_cells, n_channels), step)

    def _runs(self, n_cells: int, n_channels: int, fits):
        """Runs [block0, block1) of cell blocks, each as long as ``fits`` allows (its buffers fit one binding)."""
        n_blocks = -(-n_cells // CELLS)
        block0 = 0
        while block0 < n_blocks:
            block1 = block0 + 1
            while block1 < n_blocks and fits(block0, block1 + 1):
                block1 += 1
            if not fits(block0, block1):
                raise ValueError(f"a block of {CELLS} cells x {n_channels} channels exceeds the adapter's storage "
                                 f"binding of {self.max_binding} bytes")
            yield block0, block1
            block0 = block1

    def _execute(self, pipeline, inputs, output_sizes, n_seg: int, n_steps: int) -> list[np.ndarray]:
        """Bind ``inputs`` (uniform shape first, then storage arrays) and zeroed outputs of ``output_sizes`` bytes
        in that order, dispatch one invocation per segment ``n_steps`` times; the outputs' bytes."""
        wgpu, device = self._wgpu, self.device
        usage = wgpu.BufferUsage
        buffers = [device.create_buffer_with_data(data=data, usage=usage.UNIFORM if i == 0 else usage.STORAGE)
                   for i, data in enumerate(inputs)]
        outputs = [device.create_buffer(size=size, usage=usage.STORAGE | usage.COPY_SRC) for size in output_sizes]
        group = device.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=[
            {"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}}
            for i, b in enumerate(buffers + outputs)])
        encoder = device.create_command_encoder()
        compute = encoder.begin_compute_pass()
        compute.set_pipeline(pipeline)
        compute.set_bind_group(0, group)
        for _ in range(n_steps):  # each dispatch: one step of every unfinished segment
            compute.dispatch_workgroups(n_seg, 1, 1)
        compute.end()
        device.queue.submit([encoder.finish()])
        return [np.frombuffer(device.queue.read_buffer(b), np.uint8) for b in outputs]

    @staticmethod
    def _steps(rows: int, n_channels: int) -> int:
        """Dispatches the largest segment of ``rows`` x ``n_channels`` needs."""
        return -(-min(rows, CELLS) * min(n_channels, CHANNELS) // (LANES * GROUPS_PER_STEP))

    def _encode_run(self, q: np.ndarray, tables: np.ndarray, region_words: np.ndarray, n_chblocks: int) -> list:
        """The bodies of the segments of q (consecutive whole cell blocks), each in its region of region_words."""
        n_seg = region_words.size
        regions = np.concatenate([[0], np.cumsum(region_words)]).astype(np.uint32)
        shape = np.array([q.shape[0], q.shape[1], n_seg, n_chblocks], np.uint32)
        words, status, progress = self._execute(
            self.encoder, [shape, q, regions, tables], [4 * int(regions[-1]), 4 * n_seg,
                                                        4 * ENCODE_PROGRESS_WORDS * n_seg],
            n_seg, self._steps(*q.shape))
        status = status.view(np.uint32)
        progress = progress.view("<u4").reshape(n_seg, ENCODE_PROGRESS_WORDS)
        if not np.isin(status, (DONE, EMPTY)).all():
            raise RuntimeError(f"the wgpu encoder left segment {int(np.flatnonzero(status < DONE)[0])} unfinished")
        ends = 4 * regions[1:].astype(np.int64)
        starts = ends - 2 * progress[:, WORDS_AT].astype(np.int64)
        return [b"" if done == EMPTY else states.tobytes() + words[start:end].tobytes()  # per segment
                for done, states, start, end in zip(status, progress[:, :LANES], starts, ends)]

    def _decode_run(self, stream: np.ndarray, offsets: np.ndarray, tables: np.ndarray, out: np.ndarray,
                    n_chblocks: int) -> np.ndarray:
        """Decode the segments at offsets (consecutive whole cell blocks) into out; which of them failed."""
        n_seg = offsets.size - 1
        bodies = np.zeros(-(-(int(offsets[-1] - offsets[0]) + 1) // 4) * 4, np.uint8)
        bodies[:offsets[-1] - offsets[0]] = stream[offsets[0]:offsets[-1]]
        shape = np.array([out.shape[0], out.shape[1], n_seg, n_chblocks], np.uint32)
        indices, status, _ = self._execute(
            self.pipeline, [shape, bodies, (offsets - offsets[0]).astype(np.uint32), tables],
            [out.nbytes, 4 * n_seg, 4 * PROGRESS_WORDS * n_seg], n_seg, self._steps(*out.shape))
        out[...] = indices.view(np.int32).reshape(out.shape)
        return status.view(np.uint32) != DONE
