"""The segment coder's wgpu shaders give the CPU coder's results, bit for bit: the decoder (``native/segcode.wgsl``)
its indices on the frozen fixtures, on random shapes and scales, and on damaged streams (the same refusals); the
encoder (``native/segcode_encode.wgsl``) its bytes on the fixtures' inputs and on random shapes. Without a GPU they
run on Mesa's lavapipe; outside CI the tests skip when wgpu or an adapter is missing, in CI that is an error."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from seqkv_edge import SeqKV
from seqkv_edge.calibrate.profile import KVProfile
from seqkv_edge.codecs import segcode, segcode_wgpu
from seqkv_edge.codecs.kv_lossy import backend
from seqkv_edge.codecs.kv_lossy.codec import KVLossyCodec
from seqkv_edge.errors import CorruptDataError
from seqkv_edge.state.blob import parse_seq_state, skeleton_layout

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "segcode_v2_manifest.json").read_text())


@pytest.fixture(scope="module")
def coder():
    try:
        return backend.wgpu_segments().coder
    except RuntimeError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


def _laplace(rng, shape, scale):
    return np.clip(np.round(rng.laplace(0.0, scale, size=shape)), -segcode.MAX_ABS, segcode.MAX_ABS).astype(np.int32)


@pytest.mark.parametrize("name", sorted(MANIFEST["cases"]))
def test_fixtures_decode_to_their_indices(coder, name):
    stream = (FIXTURES / f"segcode_v2_{name}.bin").read_bytes()
    data = np.load(FIXTURES / f"segcode_v2_{name}.npy")
    if MANIFEST["cases"][name]["kind"] == "int32":
        assert np.array_equal(coder.decode(stream, *data.shape), data.astype(np.int32))
        return
    inv_step = np.load(FIXTURES / f"segcode_v2_{name}_inv_step.npy")
    step = (1.0 / inv_step).astype(np.float32)
    assert np.array_equal(coder.decode(stream, *data.shape), segcode.quantize(data, inv_step))
    gpu, cpu = coder.decode_f32(stream, *data.shape, step), segcode.decode_f32(stream, *data.shape, step)
    assert gpu.tobytes() == cpu.tobytes()


@pytest.mark.parametrize("seed", range(8))
def test_random_shapes_and_scales_decode_as_on_the_cpu(coder, seed):
    rng = np.random.default_rng(700 + seed)
    shape = (int(rng.integers(1, 2300)), int(rng.integers(1, 150)))
    scale = [0.0, 0.2, 1.0, 4.0, 60.0, 5000.0, 3.0, 0.7][seed]
    q = _laplace(rng, shape, scale)
    if seed == 6:  # escapes of every length, and the extremes
        q.flat[rng.integers(0, q.size, 40)] = rng.choice([48, -48, 49, 1000, -4097, 32767, -32767], 40)
    if seed == 7:  # constant and all-zero channels beside coded ones
        q[:, ::3] = 0
        q[:, 1::5] = -1
    stream = segcode.encode(q, format=2)
    assert np.array_equal(coder.decode(stream, *shape), q)


def test_segments_split_across_dispatches_and_bindings(coder, monkeypatch):
    """Segments longer than one dispatch's groups, and tensors cut into runs of cell blocks by the binding size."""
    q = _laplace(np.random.default_rng(3), (2 * segcode.SEGMENT2_CELLS + 5, 70), 2.0)
    stream = segcode.encode(q, format=2)
    monkeypatch.setattr(coder, "max_binding", segcode.SEGMENT2_CELLS * 70 * 4)
    assert np.array_equal(coder.decode(stream, *q.shape), q)


def _outcome(decode, stream, shape):
    try:
        return decode(stream, *shape).tobytes()
    except CorruptDataError:
        return "corrupt"


def test_damaged_streams_give_the_cpu_decoders_outcome(coder):
    rng = np.random.default_rng(5)
    q = _laplace(rng, (300, 130), 2.0)
    q[7, 9] = 20000
    stream = segcode.encode(q, format=2)
    body = int(segcode.segment_offsets(stream, 300, 130)[0])
    for bad in (stream[: len(stream) // 2], stream[:-1], stream[:body] + b"\xff" * (len(stream) - body)):
        with pytest.raises(CorruptDataError):
            coder.decode(bad, 300, 130)
    for _ in range(24):
        damaged = bytearray(stream)
        at = int(rng.integers(body, len(stream)))
        damaged[at] ^= 1 << int(rng.integers(0, 8))
        damaged = bytes(damaged)
        assert _outcome(coder.decode, damaged, q.shape) == _outcome(segcode.decode, damaged, q.shape)
    with pytest.raises(CorruptDataError, match="shape"):
        coder.decode(stream, 301, 130)
    with pytest.raises(CorruptDataError, match="format 1"):
        coder.decode(segcode.encode(q, format=1), 300, 130)


@pytest.mark.parametrize("name", sorted(MANIFEST["cases"]))
def test_fixtures_inputs_encode_to_their_streams(coder, name):
    stream = (FIXTURES / f"segcode_v2_{name}.bin").read_bytes()
    data = np.load(FIXTURES / f"segcode_v2_{name}.npy")
    if MANIFEST["cases"][name]["kind"] == "float32":
        data = segcode.quantize(data, np.load(FIXTURES / f"segcode_v2_{name}_inv_step.npy"))
    assert coder.encode(data) == stream


@pytest.mark.parametrize("seed", range(8))
def test_random_shapes_and_scales_encode_as_on_the_cpu(coder, seed):
    """Shapes off the segments' multiples, escapes up to +-MAX_ABS, constant and all-zero channels; each side decodes
    the other's stream."""
    rng = np.random.default_rng(900 + seed)
    shape = (int(rng.integers(1, 2300)), int(rng.integers(1, 150)))
    scale = [0.0, 0.3, 1.0, 4.0, 60.0, 5000.0, 2.0, 0.7][seed]
    q = _laplace(rng, shape, scale)
    if seed == 6:  # escapes of every length, and the extremes
        q.flat[rng.integers(0, q.size, 60)] = rng.choice([47, -48, 49, 1000, -4097, 16431, 32767, -32767], 60)
    if seed == 7:  # constant channels, all-zero ones and a segment of zeros beside coded ones
        q[:, ::3] = 0
        q[:, 1::5] = -3
        q[: min(shape[0], segcode.SEGMENT2_CELLS), :64] = 0
    cpu = segcode.encode(q, format=2)
    gpu = coder.encode(q)
    assert gpu == cpu
    assert np.array_equal(segcode.decode(gpu, *shape), q)
    assert np.array_equal(coder.decode(cpu, *shape), q)


def test_encoder_splits_segments_across_dispatches_and_bindings(coder, monkeypatch):
    q = _laplace(np.random.default_rng(4), (2 * segcode.SEGMENT2_CELLS + 5, 70), 3.0)
    monkeypatch.setattr(coder, "max_binding", segcode.SEGMENT2_CELLS * 70 * 6 + 64)
    assert coder.encode(q) == segcode.encode(q, format=2)


def test_encoder_refuses_what_the_cpu_refuses(coder):
    for bad in (np.zeros((0, 5), np.int32), np.zeros((5, 0), np.int32)):
        with pytest.raises(ValueError):
            segcode.encode(bad, format=2)
        with pytest.raises(ValueError):
            coder.encode(bad)
    out_of_range = np.zeros((4, 4), np.int32)
    out_of_range[1, 2] = segcode.MAX_ABS + 1
    with pytest.raises(ValueError, match="outside"):
        coder.encode(out_of_range)


def test_metal_device_codes_format_6_states_as_the_cpu(coder, tmp_path, monkeypatch):
    """The lossy format-6 fixture's state and profile: the metal device's payloads are the CPU's, and it decodes
    them to the CPU's state bytes."""
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    fx = np.load(FIXTURES / "kv_lossy_v6.npz")
    (tmp_path / "profile.npz").write_bytes(fx["profile"].tobytes())
    profile, rope = KVProfile.load(tmp_path / "profile.npz"), json.loads(str(fx["rope"]))
    state = parse_seq_state(fx["expected"].tobytes(), has_cell_ext=False)
    positions = [st.positions for sec in state.sections for st in sec.streams]
    restored = []
    for device in ("cpu", "metal"):
        codec = KVLossyCodec(bits=2.0, version=6, device=device)
        payloads = codec.encode_state(state, rope, profile=profile)
        out, tensors = skeleton_layout(state.skeleton(), expected_size=len(fx["expected"]))
        codec.decode_state(payloads, tensors, positions, rope, profile=profile)
        restored.append((payloads, bytes(out)))
    assert {p[0] for p in restored[1][0]} == {6}
    assert restored[1] == restored[0]


def test_metal_device_decodes_format_6_streams_as_the_cpu(coder):
    rng = np.random.default_rng(9)
    rows = (rng.standard_normal((700, 96)) * rng.uniform(0.1, 3.0, 96)).astype(np.float32)
    inv_step = rng.uniform(0.5, 8.0, 96).astype(np.float32)
    step = (1.0 / inv_step).astype(np.float32)
    metal, cpu = backend.for_state("metal", rows.nbytes), backend.for_state("cpu", rows.nbytes)
    assert isinstance(metal, backend.WgpuSegments)
    coded = metal.encode_rows(rows, inv_step, step, None)
    assert coded == cpu.encode_rows(rows, inv_step, step, None)
    decoded = metal.decode_f32(coded, 700, 96, step, np.empty((700, 96), np.float32))
    assert decoded.tobytes() == cpu.decode_f32(coded, 700, 96, step, np.empty((700, 96), np.float32)).tobytes()
    assert SeqKV(kv="lossy", device="metal").device == "metal"
    assert KVLossyCodec(bits=2.0, version=6, device="metal").get_config() == KVLossyCodec(bits=2.0, version=6).get_config()


def test_sessions_saved_with_device_metal_are_format_6_and_restore_on_the_cpu(coder, tiny_model_path, tmp_path):
    from seqkv_edge import Llama
    from seqkv_edge.container.session_file import Kind, read_container

    settings = dict(kv="lossy", bits=3.0, model_profile=False)
    llm = Llama(model_path=tiny_model_path, n_ctx=512, verbose=False, kv_compressor=SeqKV(device="metal", **settings))
    llm.eval(llm.tokenize(b"A compute shader codes the segments of every tensor. " * 4))
    llm.save_session(tmp_path / "metal.seqkv")
    assert {p[0] for p in read_container(tmp_path / "metal.seqkv").payloads(Kind.KV)} == {6}
    fresh = Llama(model_path=tiny_model_path, n_ctx=512, verbose=False, kv_compressor=SeqKV(device="cpu"))
    assert fresh.load_session(tmp_path / "metal.seqkv").n_tokens == llm.n_tokens
