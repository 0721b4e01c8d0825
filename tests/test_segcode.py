"""Segment coder (seqkv_edge.codecs.segcode, native/segcode*): frozen format, round trips, threads, hostile input."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from seqkv_edge.codecs import segcode
from seqkv_edge.errors import CorruptDataError

FIXTURES = Path(__file__).parent / "fixtures"
MANIFESTS = {fmt: json.loads((FIXTURES / f"segcode_v{fmt}_manifest.json").read_text()) for fmt in (1, 2)}
CASES = [(fmt, name) for fmt, manifest in MANIFESTS.items() for name in sorted(manifest["cases"])]


def _fixture(fmt, name):
    case = MANIFESTS[fmt]["cases"][name]
    stream = (FIXTURES / f"segcode_v{fmt}_{name}.bin").read_bytes()
    data = np.load(FIXTURES / f"segcode_v{fmt}_{name}.npy")
    return case, stream, data.astype(np.int32) if case["kind"] == "int32" else data


@pytest.mark.parametrize("fmt,name", CASES)
def test_fixture_streams_are_frozen(fmt, name):
    case, stream, data = _fixture(fmt, name)
    assert MANIFESTS[fmt]["format"] == fmt and stream[4] == fmt
    assert hashlib.sha256(stream).hexdigest() == case["sha256"]
    assert list(data.shape) == case["shape"]
    if case["kind"] == "int32":
        assert segcode.encode(data, threads=1, format=fmt) == stream
        assert segcode.encode(data, threads=2, format=fmt) == stream
        assert np.array_equal(segcode.decode(stream, *data.shape), data)
    else:
        inv_step = np.load(FIXTURES / f"segcode_v{fmt}_{name}_inv_step.npy")
        assert segcode.encode_f32(data, inv_step, threads=2, format=fmt) == stream
        q = segcode.quantize(data, inv_step)
        assert segcode.encode(q, format=fmt) == stream
        assert np.array_equal(segcode.decode(stream, *data.shape), q)
        step = (1.0 / inv_step).astype(np.float32)
        assert np.array_equal(segcode.decode_f32(stream, *data.shape, step), q.astype(np.float32) * step)


def _laplace(shape, scale, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.laplace(0.0, scale, size=shape)), -32767, 32767).astype(np.int32)


@pytest.mark.parametrize("fmt", [1, 2])
@pytest.mark.parametrize("shape", [(1, 1), (1, 200), (700, 1), (256, 64), (257, 65), (1000, 130), (2049, 65)])
@pytest.mark.parametrize("scale", [0.0, 0.4, 3.0, 900.0, 1e6])
def test_round_trip_exact(fmt, shape, scale):
    q = _laplace(shape, scale)
    stream = segcode.encode(q, format=fmt)
    assert segcode.stream_info(stream) == shape and stream[4] == fmt
    assert np.array_equal(segcode.decode(stream, *shape), q)
    step = np.linspace(0.5, 2.0, shape[1], dtype=np.float32)
    assert np.array_equal(segcode.decode_f32(stream, *shape, step, threads=2), q.astype(np.float32) * step)


@pytest.mark.parametrize("fmt", [1, 2])
def test_bytes_do_not_depend_on_thread_count(fmt):
    q = _laplace((4500, 200), 2.0, seed=5)
    streams = {segcode.encode(q, threads=t, format=fmt) for t in (1, 2, 3, 8, 64, 500)}
    assert len(streams) == 1
    stream = streams.pop()
    for t in (1, 2, 7, 64):
        assert np.array_equal(segcode.decode(stream, 4500, 200, threads=t), q)


def test_segments_are_independent():
    """A segment's body depends only on its own block: changing one block changes one body."""
    q = _laplace((600, 150), 2.0, seed=6)
    other = q.copy()
    other[300:400, 70:90] += 1  # inside segment (cell block 1, channel block 1)
    a, b = segcode.segment_offsets(segcode.encode(q), 600, 150), None
    sa, sb = segcode.encode(q), segcode.encode(other)
    b = segcode.segment_offsets(sb, 600, 150)
    bodies_a = [sa[a[i]:a[i + 1]] for i in range(len(a) - 1)]
    bodies_b = [sb[b[i]:b[i + 1]] for i in range(len(b) - 1)]
    differing = [i for i, (x, y) in enumerate(zip(bodies_a, bodies_b)) if x != y]
    assert differing == [1 * 3 + 1]


def test_constant_segments_cost_their_table_only():
    q = np.zeros((512, 128), dtype=np.int32)
    stream = segcode.encode(q)
    assert len(stream) == 16 + 4 * 4 + 4 * 1  # header, size table, a one-byte table per segment
    assert np.array_equal(segcode.decode(stream, 512, 128), q)


def test_out_of_range_index_is_refused():
    q = np.zeros((10, 10), dtype=np.int32)
    q[3, 3] = 32768
    with pytest.raises(ValueError, match="outside"):
        segcode.encode(q)


def test_quantize_rounds_ties_away_from_zero_and_clamps():
    x = np.array([[0.5, -0.5, 1.5, -2.5, 0.49999997, 1e9, -1e9, np.nan, 2.4999998]], dtype=np.float32)
    q = segcode.quantize(x, np.ones(x.shape[1], dtype=np.float32))
    assert q.tolist() == [[1, -1, 2, -3, 0, 32767, -32767, 0, 2]]
    step = np.full(x.shape[1], 0.1, dtype=np.float32)
    assert np.array_equal(segcode.dequantize(q, step), q.astype(np.float32) * step)


def test_decode_refuses_another_shape():
    stream = segcode.encode(_laplace((300, 70), 1.0))
    with pytest.raises(CorruptDataError, match="another shape"):
        segcode.decode(stream, 300, 71)


def test_truncated_streams_raise_cleanly():
    q = _laplace((300, 130), 2.0, seed=7)
    stream = segcode.encode(q)
    for n in [0, 3, 15, 16, 20, 40, len(stream) // 2, len(stream) - 2, len(stream) - 1]:
        with pytest.raises(CorruptDataError):
            segcode.decode(stream[:n], 300, 130)


def test_mutated_streams_raise_or_decode_without_crashing():
    q = _laplace((300, 130), 2.0, seed=8)
    stream = bytearray(segcode.encode(q))
    rng = np.random.default_rng(9)
    caught = 0
    for trial in range(400):
        bad = bytearray(stream)
        for pos in rng.integers(0, len(bad), size=1 + trial % 4):
            bad[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            out = segcode.decode(bytes(bad), 300, 130, threads=2)
        except CorruptDataError:
            caught += 1
        else:
            assert np.abs(out).max() <= segcode.MAX_ABS + 1
    assert caught > 300  # lanes must end in their initial state: damage is almost always detected


def test_hostile_size_table_is_refused():
    q = _laplace((300, 130), 2.0, seed=10)
    stream = bytearray(segcode.encode(q))
    for size in (0, 0xFFFFFFFF, 65729, len(stream)):
        bad = bytearray(stream)
        bad[16:20] = int(size).to_bytes(4, "little")
        with pytest.raises(CorruptDataError):
            segcode.decode(bytes(bad), 300, 130)
    bad = bytearray(stream)
    bad[8:12] = (2**32 - 1).to_bytes(4, "little")  # a header claiming a huge tensor: the caller's shape rules
    with pytest.raises(CorruptDataError, match="another shape"):
        segcode.decode(bytes(bad), 300, 130)


def test_trailing_bytes_are_not_part_of_the_stream():
    q = _laplace((100, 100), 1.0, seed=11)
    stream = segcode.encode(q)
    assert np.array_equal(segcode.decode(stream + b"\x00" * 7, 100, 100), q)
    assert segcode.segment_offsets(stream + b"xx", 100, 100)[-1] == len(stream)


def test_decode_into_out_and_wrong_out():
    q = _laplace((50, 60), 1.0)
    out = np.empty((50, 60), dtype=np.int32)
    assert segcode.decode(segcode.encode(q), 50, 60, out=out) is out
    assert np.array_equal(out, q)
    with pytest.raises(ValueError):
        segcode.decode(segcode.encode(q), 50, 60, out=np.empty((50, 60), dtype=np.int64))


# ---- format 2: per-channel models in one table section ----

def test_format_2_segments_are_independent():
    """A format-2 body depends only on its own block and the channels' models: values moved within one block's
    columns (the same per-channel statistics, so the same models) change that block's body only."""
    q = _laplace((4500, 150), 2.0, seed=12)
    other = q.copy()
    other[2100:2400, 70:90] = other[2100:2400, 70:90][::-1]  # cell block 1, channel block 1 (of 3)
    sa, sb = segcode.encode(q, format=2), segcode.encode(other, format=2)
    a, b = segcode.segment_offsets(sa, 4500, 150), segcode.segment_offsets(sb, 4500, 150)
    models_end = 20 + int.from_bytes(sa[16:20], "little")  # header, table-section size, the models
    assert sa[:models_end] == sb[:models_end]
    differing = [i for i in range(len(a) - 1) if sa[a[i]:a[i + 1]] != sb[b[i]:b[i + 1]]]
    assert differing == [1 * 3 + 1]


def test_format_2_codes_near_the_per_channel_entropy():
    """Channels of very different widths: format 2 (one model per channel) gets within 3% of their order-0
    entropy plus its side information, where format 1 (one table per segment) pays for mixing them."""
    rng = np.random.default_rng(13)
    widths = np.exp(rng.uniform(-2.0, 2.5, size=128))
    q = np.round(rng.laplace(0.0, 1.0, size=(4000, 128)) * widths).astype(np.int32)
    entropy = 0.0
    for column in q.T:
        _, counts = np.unique(column, return_counts=True)
        entropy -= (counts * np.log2(counts / counts.sum())).sum()
    bits1, bits2 = 8 * len(segcode.encode(q, format=1)), 8 * len(segcode.encode(q, format=2))
    assert bits2 < 1.03 * entropy < bits1


def test_format_2_cost_estimates_the_coded_size():
    rng = np.random.default_rng(14)
    x = (rng.standard_normal((3000, 128)) * np.exp(rng.uniform(-1, 2, 128))).astype(np.float32)
    inv_step = np.full(128, 2.0, np.float32)
    bits = 8 * len(segcode.encode_f32(x, inv_step, format=2))
    assert abs(segcode.cost(x, inv_step) / bits - 1) < 0.02
    assert abs(segcode.cost(x, inv_step, row_every=8) / bits - 1) < 0.05
    assert segcode.cost_sample(x[::8], inv_step, 3000) == pytest.approx(segcode.cost(x, inv_step, row_every=8))


def test_format_2_all_zero_segments_have_empty_bodies():
    q = np.zeros((2100, 130), dtype=np.int32)
    q[5, 3] = 1  # channel 3 coded (in both cell blocks of channel block 0); every other channel all zeros
    stream = segcode.encode(q, format=2)
    offsets = segcode.segment_offsets(stream, 2100, 130)
    sizes = np.diff(offsets.astype(np.int64))
    assert (sizes[[0, 3]] > 0).all() and (sizes[[1, 2, 4, 5]] == 0).all()
    assert np.array_equal(segcode.decode(stream, 2100, 130), q)


@pytest.mark.parametrize("fmt", [1, 2])
def test_each_decoder_refuses_the_other_format_only_through_the_header(fmt):
    q = _laplace((300, 70), 1.0)
    stream = bytearray(segcode.encode(q, format=fmt))
    stream[4] = 3
    with pytest.raises(CorruptDataError):
        segcode.decode(bytes(stream), 300, 70)
    with pytest.raises(ValueError, match="format"):
        segcode.encode(q, format=3)


def test_format_2_damaged_streams_raise_cleanly():
    q = _laplace((2300, 130), 2.0, seed=15)
    stream = segcode.encode(q, format=2)
    for n in [0, 16, 19, 20, 40, len(stream) // 2, len(stream) - 2, len(stream) - 1]:
        with pytest.raises(CorruptDataError):
            segcode.decode(stream[:n], 2300, 130)
    rng = np.random.default_rng(16)
    caught = 0
    for trial in range(300):
        bad = bytearray(stream)
        for pos in rng.integers(0, len(bad), size=1 + trial % 4):
            bad[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            out = segcode.decode(bytes(bad), 2300, 130, threads=2)
        except CorruptDataError:
            caught += 1
        else:
            assert np.abs(out).max() <= segcode.MAX_ABS
    assert caught > 250
    for at, value in ((16, 0xFFFFFFFF), (16, 0), (16, 10**6)):  # the table section's size
        bad = bytearray(stream)
        bad[at:at + 4] = int(value).to_bytes(4, "little")
        with pytest.raises(CorruptDataError):
            segcode.decode(bytes(bad), 2300, 130)
    with pytest.raises(CorruptDataError, match="another shape"):
        segcode.decode(stream, 2300, 131)


def test_format_2_encode_f32_gives_back_what_the_decoder_gives():
    """encode_f32(..., step, out): out receives index * step in the coding pass, bit for bit decode_f32's values."""
    rng = np.random.default_rng(17)
    x = (rng.standard_normal((2300, 70)) * np.exp(rng.uniform(-1, 2, 70))).astype(np.float32)
    inv_step = rng.uniform(0.5, 4.0, 70).astype(np.float32)
    step = (1.0 / inv_step).astype(np.float32)
    out = np.empty_like(x)
    stream = segcode.encode_f32(x, inv_step, threads=2, format=2, step=step, out=out)
    assert stream == segcode.encode_f32(x, inv_step, format=2)
    assert np.array_equal(out, segcode.decode_f32(stream, 2300, 70, step))
    assert np.array_equal(out, segcode.dequantize(segcode.quantize(x, inv_step), step))
    with pytest.raises(ValueError):
        segcode.encode_f32(x, inv_step, format=1, step=step, out=out)


def test_coding_tables_for_other_coders_come_from_the_stream_or_the_fit_alike():
    """The tables the WGSL shaders read: the same from a stream's models as from the fit that wrote them; bad
    models and damaged streams are refused."""
    rng = np.random.default_rng(5)
    q = np.clip(np.round(rng.laplace(0, 40.0, size=(2500, 70))), -32767, 32767).astype(np.int32)
    head, k, u = segcode.fit_models(q)
    stream = segcode.encode(q, format=2)
    tables = segcode.model_tables(k, u)
    assert np.array_equal(tables, segcode.stream_tables(stream, *q.shape))
    n_sym = tables[:, 0]
    assert np.all(n_sym == 2 * k - 1 + (k == 48)) and np.all(tables[np.arange(70), 2 + n_sym] == 4096)
    assert np.all(np.diff(tables[:, 2:].astype(np.int64), axis=1) >= 0)  # cumulative
    with pytest.raises(ValueError):
        segcode.model_tables(np.zeros(3, np.int64), np.zeros((3, 3), np.int64))  # k = 0
    with pytest.raises(ValueError):
        segcode.model_tables(np.full(3, 5), np.full((3, 3), 256))  # u past 8 bits
    with pytest.raises(CorruptDataError):
        segcode.stream_tables(stream[:30], *q.shape)
    with pytest.raises(CorruptDataError):
        segcode.stream_tables(stream, 2501, 70)
