"""Sliding-window (iSWA) sections restored to the cache slots they held, so a restored context continues
bit-identically.

An iSWA model (Gemma 3, ...) writes a second KV section for its sliding-window layers holding only the cells still
inside the window: positions ``p0 .. n-1`` of a session of ``n`` tokens. ``llama_state_seq_set_data`` puts them
into slots ``0 .. n-p0-1`` of a fresh cache, while the saved context kept cell ``pos`` in slot ``pos``; attention
then sums the same terms in another order and the next logits differ (llama.cpp #25295; figures in
``benchmarks/RESULTS.md``). Writing ``p0`` placeholder
cells (positions ``0 .. p0-1``, zero K/V) in front of the window puts every real cell back in its slot; the
placeholders lie outside the window, so attention masks them and llama.cpp prunes them on the next decode, as it
pruned the originals. Needs a full-size sliding-window cache (llama-cpp-python's default, ``swa_full``): a ring
buffer smaller than the context cannot hold the padded section.
"""
from __future__ import annotations

import struct

import numpy as np

from .blob import model_state_options, parse_seq_state, write_seq_state

__all__ = ["model_layer_ids", "window_slots", "write_state"]

# architectures whose full-attention layers come first in each period (llama.cpp load_swa_pattern(..., true))
_DENSE_FIRST = ("cohere2moe", "laguna", "modern-bert", "smallthinker")

def window_slots(blob, llm):
    """``blob`` with each later KV section padded so its cells land in the slots they held; ``blob`` itself when
    nothing needs padding (one section, a ring-buffer window, cells not in position order)."""
    if not getattr(llm.context_params, "swa_full", False) or not model_state_options(llm)["n_swa"]:
        return blob  # a ring-buffer window, or no sliding window at all: nothing to put back
    state = parse_seq_state(blob, model=llm)
    if len(state.sections) < 2:
        return blob
    parts, end = [bytes(memoryview(blob)[:state.sections[1].span[0]])], state.sections[1].span[0]
    for section in state.sections[1:]:
        padded = _padded_section(section, state)
        if padded is None:
            return blob
        parts.append(padded)
        end = section.span[1]
    parts.append(bytes(memoryview(blob)[end:]))
    return b"".join(parts)


def _padded_section(section, state) -> bytes | None:
    """The section with placeholder cells in front of its window; None when it is not one in-order window."""
    if len(section.streams) != 1:
        return None
    stream = section.streams[0]
    first = int(stream.positions[0]) if stream.cell_count else 0
    if first == 0:
        return bytes(state.blob[section.span[0]:section.span[1]])
    if not np.array_equal(stream.positions, np.arange(first, first + stream.cell_count)) or (stream.n_seq_id != 1).any():
        return None
    out = [struct.pack("<II", 1, first + stream.cell_count), _placeholder_cells(first, state.has_cell_ext, state.seq_id),
           bytes(state.blob[_cells_span(stream, section, state)])]
    for tensor in stream.k + stream.v:
        out += [_tensor_header(tensor), _padded_data(tensor, first)]
    return b"".join(out)


def _placeholder_cells(count: int, has_ext: bool, seq_id: int) -> bytes:
    record = np.dtype([("pos", "<i4"), ("n", "<u4")] + ([("ext", "<i4", (3,))] if has_ext else []) + [("id", "<i4")])
    cells = np.zeros(count, record)
    cells["pos"], cells["n"], cells["id"] = np.arange(count), 1, max(seq_id, 0)
    return cells.tobytes()


def _cells_span(stream, section, state) -> slice:
    """The stream's cell records and its (v_trans, n_layer) header: after the section's u32 n_stream and the
    stream's u32 cell_count, up to the first tensor's own header."""
    record = 8 + (12 if state.has_cell_ext else 0) + 4  # pos, n_seq_id, ext, one seq id
    start = section.span[0] + 8
    return slice(start, start + record * stream.cell_count + 8)


def _tensor_header(tensor) -> bytes:
    if tensor.transposed:
        return struct.pack("<iII", tensor.ggml_type.id, tensor.element_bytes, tensor.n_channels)
    return struct.pack("<iQ", tensor.ggml_type.id, tensor.data.shape[1])


def _padded_data(tensor, count: int) -> bytes:
    if tensor.transposed:  # channel-major: each channel's run of cells gets the placeholders in front
        pad = np.zeros((tensor.data.shape[0], count * tensor.element_bytes), np.uint8)
        return np.concatenate([pad, tensor.data], axis=1).tobytes()
    return bytes(count * tensor.data.shape[1]) + tensor.data.tobytes()


def write_state(llm, blob, seq_id: int = 0) -> None:
    """``write_seq_state`` into a ``Llama`` with its sliding-window cells back in their slots."""
    write_seq_state(llm.ctx, window_slots(blob, llm), seq_id)


def model_layer_ids(llm, state) -> list[int]:
    """The model's own index of each layer of ``state`` in depth order (``KVTensor.depth``: the first section's
    layers, then the sliding-window section's). llama.cpp keeps the full-attention layers in the first cache and
    the sliding-window ones in the second, each in model order; which is which follows the architecture's period
    (Gemma 3: five sliding-window layers, then one full)."""
    counts = [max((len(st.k) for st in sec.streams), default=0) for sec in state.sections]
    n_layer = sum(counts)
    if len(counts) != 2 or not counts[0]:
        return list(range(n_layer))
    period = n_layer // counts[0]
    arch = llm.metadata.get("general.architecture", "")
    full = [il for il in range(n_layer) if (il % period == 0 if arch in _DENSE_FIRST else il % period == period - 1)]
    if len(full) != counts[0]:
        return list(range(n_layer))
    return full + [il for il in range(n_layer) if il not in set(full)]
