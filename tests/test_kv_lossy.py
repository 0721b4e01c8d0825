"""The lossy KV codec on the tiny model: error bounds per cache type and layout, rate control, safe restores,
model-derived bases (format 2), static entropy models (format 3), segment-coded streams (format 6), and the frozen
format versions 1 to 6 (tests/fixtures/kv_lossy_v*.npz)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lossy_payload import fields_at, steps_of

from seqkv_edge.calibrate.profile import (
    KVProfile,
    coded_bodies,
    metric_bases,
    profile_from_state,
    query_metric,
    with_predictors,
)
from seqkv_edge.codecs import get_codec
from seqkv_edge.codecs.kv_lossy import codec as codec_module
from seqkv_edge.codecs.kv_lossy.codec import KVLossyCodec, tensor_values
from seqkv_edge.errors import CorruptDataError, ModelMismatchError
from seqkv_edge.state.blob import (
    parse_seq_state,
    read_seq_state,
    skeleton_layout,
    write_seq_state,
)
from seqkv_edge.state.rope import apply_rope, rope_params, undo_rope

F32, F16, Q4_0, Q8_0, BF16 = 0, 1, 2, 8, 30
TEXT = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. " * 2
LAYOUTS = [  # (type_k, type_v, flash_attn)
    (F16, F16, False), (F16, F16, True), (F32, F32, False), (BF16, BF16, True),
    (Q8_0, Q8_0, True), (Q4_0, Q4_0, True), (Q8_0, F16, False),
]
FIXTURE = Path(__file__).parent / "fixtures" / "kv_lossy_v1.npz"
FIXTURE_V2 = Path(__file__).parent / "fixtures" / "kv_lossy_v2.npz"
FIXTURE_V3 = Path(__file__).parent / "fixtures" / "kv_lossy_v3.npz"
FIXTURE_V4 = Path(__file__).parent / "fixtures" / "kv_lossy_v4.npz"
FIXTURE_V4_P3 = Path(__file__).parent / "fixtures" / "kv_lossy_v4_profile3.npz"  # KV profile version 3
FIXTURE_V5 = Path(__file__).parent / "fixtures" / "kv_lossy_v5.npz"
FIXTURE_V6 = Path(__file__).parent / "fixtures" / "kv_lossy_v6.npz"


def make_llama(path, type_k=F16, type_v=F16, flash_attn=False):
    from llama_cpp import Llama

    return Llama(model_path=path, n_ctx=512, n_batch=128, verbose=False, type_k=type_k, type_v=type_v,
                 flash_attn=flash_attn, n_threads=2)


def session(llm):
    llm.eval(llm.tokenize(TEXT))
    blob = bytes(read_seq_state(llm.ctx))
    return blob, parse_seq_state(blob, model=llm)


def lossy_round_trip(state, blob, codec, rope, profile=None):
    payloads = codec.encode_state(state, rope, profile=profile)
    out, tensors = skeleton_layout(state.skeleton(), expected_size=len(blob))
    codec.decode_state(payloads, tensors, [st.positions for sec in state.sections for st in sec.streams], rope,
                       profile=profile)
    return payloads, out, tensors


def type_step(tensor, x, roped: bool = False):
    """The worst rounding of the target cache type itself, per value; ``roped``: ``x`` is keys with RoPE undone
    (norm-type pairs), whose stored (rotated) values each mix both values of their pair."""
    name = tensor.ggml_type.name
    if roped and name not in ("q8_0", "q4_0"):
        pairs = x.reshape(x.shape[0], -1, 2)
        x = np.repeat(np.sqrt(2) * np.hypot(pairs[..., 0], pairs[..., 1]), 2, axis=1)
    if name in ("q8_0", "q4_0"):
        amax = np.abs(x).reshape(x.shape[0], -1, 32).max(axis=-1)
        per_block = amax / (127.0 if name == "q8_0" else 7.0)
        return np.repeat(per_block, 32, axis=1) * np.sqrt(tensor.n_channels)  # rotated: spread over the head
    rel = {"f16": 2.0 ** -11, "bf16": 2.0 ** -8, "f32": 2.0 ** -24}[name]
    return np.abs(x) * rel + 1e-6


@pytest.mark.parametrize("type_k,type_v,flash_attn", LAYOUTS)
def test_round_trip_within_error_bound_and_restores(tiny_model_path, type_k, type_v, flash_attn):
    llm = make_llama(tiny_model_path, type_k, type_v, flash_attn)
    blob, state = session(llm)
    rope = rope_params(llm)
    assert rope["type"] == "norm" and rope["head_dim_k"] == 32
    payloads, out, tensors = lossy_round_trip(state, blob, KVLossyCodec(bits=4.0), rope)
    positions = state.sections[0].streams[0].positions
    for src, dst, payload in zip(state.tensors(), tensors, payloads):
        x, y = tensor_values(src, rope), tensor_values(dst, rope)
        assert y.shape == x.shape and np.isfinite(y).all()
        if src.kind == "k":  # the quantizer's bound holds before RoPE
            x, y = undo_rope(x, positions, rope), undo_rope(y, positions, rope)
        roped = src.kind == "k"
        bound = (steps_of(payload) / 2 + type_step(src, x, roped) + type_step(dst, y, roped)
                 + 1e-3 * np.abs(x).max())
        assert (np.abs(y - x) <= bound).all(), src.name
    write_seq_state(llm.ctx, out)  # llama.cpp accepts the restored state and keeps evaluating
    llm.n_tokens = state.sections[0].streams[0].cell_count
    llm.eval(llm.tokenize(b" more", add_bos=False))
    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    assert np.isfinite(logits).all()


@pytest.mark.parametrize("bits,version", [(1.0, 3), (2.0, 3), (4.0, 3), (2.0, 2)])
def test_rate_control_hits_target_within_5_percent(tiny_model_path, bits, version):
    llm = make_llama(tiny_model_path, F16, F16, True)
    blob, state = session(llm)
    payloads = KVLossyCodec(bits=bits, version=version).encode_state(state, rope_params(llm))
    n_values = sum(t.n_cells * t.n_channels for t in state.tensors())
    assert abs(8 * sum(map(len, payloads)) / n_values / bits - 1) <= 0.05


def test_more_bits_less_error(tiny_model_path):
    llm = make_llama(tiny_model_path)
    blob, state = session(llm)
    rope = rope_params(llm)
    errors = []
    for bits in (1.0, 3.0, 6.0):
        _, _, tensors = lossy_round_trip(state, blob, KVLossyCodec(bits=bits), rope)
        errors.append(sum(float(np.mean((tensor_values(a) - tensor_values(b)) ** 2))
                          for a, b in zip(state.tensors(), tensors)))
    assert errors[0] > errors[1] > errors[2]


def test_rope_undo_redo_is_identity():
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((50, 128)).astype(np.float32)
    positions = np.arange(7, 57, dtype=np.int32)
    for kind in ("neox", "norm"):
        rope = {"type": kind, "n_rot": 48, "freq_base": 1e6, "freq_scale": 1.0, "head_dim_k": 64}
        assert np.allclose(apply_rope(undo_rope(keys, positions, rope), positions, rope), keys, atol=1e-5)
        assert np.allclose(undo_rope(keys, positions, rope)[:, 48:64], keys[:, 48:64])  # n_rot < head_dim
        # the native rotation rounds as numpy's a cos - b sin, a sin + b cos on the pairs
        theta = positions[:, None] * 1e6 ** (-np.arange(24) / 24)
        cos, sin = np.cos(theta), np.sin(theta)
        pairs = (np.arange(24), np.arange(24) + 24) if kind == "neox" else (np.arange(0, 48, 2), np.arange(1, 48, 2))
        a, b = keys[:, :64][:, pairs[0]], keys[:, :64][:, pairs[1]]
        expected = keys.copy()
        expected[:, pairs[0]] = a * cos.astype(np.float32) - b * sin.astype(np.float32)
        expected[:, pairs[1]] = a * sin.astype(np.float32) + b * cos.astype(np.float32)
        assert np.array_equal(apply_rope(keys, positions, rope)[:, :64], expected[:, :64])
    with pytest.raises(ValueError, match="not a supported rotation"):
        undo_rope(keys, positions, dict(rope, n_rot=80))
    with pytest.raises(ValueError, match="positions"):
        undo_rope(keys, positions[:10], rope)


def test_config_round_trip_and_validation():
    codec = KVLossyCodec(bits=2.0)
    assert json.loads(json.dumps(codec.get_config())) == {"id": "kv_lossy", "bits": 2.0, "max_kl": None, "version": 5}
    assert get_codec(codec.get_config()) == codec
    assert get_codec(KVLossyCodec(max_kl=0.01).get_config()).max_kl == 0.01
    for bad in ({}, {"bits": 2.0, "max_kl": 0.1}, {"bits": 0.0}, {"max_kl": -1.0}, {"bits": 2.0, "version": 7}):
        with pytest.raises(ValueError):
            KVLossyCodec(**bad)


@pytest.mark.parametrize("version", [5, 6])
def test_corrupt_or_mismatched_payloads_raise(tiny_model_path, version):
    llm = make_llama(tiny_model_path)
    blob, state = session(llm)
    rope = rope_params(llm)
    codec = KVLossyCodec(bits=2.0, version=version)
    payloads = codec.encode_state(state, rope)
    positions = [state.sections[0].streams[0].positions]
    cases = [
        (CorruptDataError, [payloads[0][:-3]] + payloads[1:]),
        (CorruptDataError, [bytes([9]) + payloads[0][1:]] + payloads[1:]),  # unknown format version
        (CorruptDataError, [payloads[0][:-8] + bytes(8)] + payloads[1:]),  # damaged entropy-coded bits
        (CorruptDataError, payloads[:-1]),
    ]
    for error, bad in cases:
        _, tensors = skeleton_layout(state.skeleton(), expected_size=len(blob))
        with pytest.raises(error):
            codec.decode_state(bad, tensors, positions, rope)
    llm.eval(llm.tokenize(b" longer", add_bos=False))  # another cell count: a mismatched context
    other = parse_seq_state(bytes(read_seq_state(llm.ctx)), model=llm)
    _, tensors = skeleton_layout(other.skeleton())
    with pytest.raises(ModelMismatchError):
        codec.decode_state(payloads, tensors, [other.sections[0].streams[0].positions], rope)


def test_format_version_1_fixture_still_decodes():
    """The fixture was written by format version 1; its decoded values must never change."""
    fx = np.load(FIXTURE)
    rope = json.loads(str(fx["rope"]))
    n = int(fx["n_payloads"])
    payloads = [fx[f"payload_{i}"].tobytes() for i in range(n)]
    out, tensors = skeleton_layout(fx["skeleton"].tobytes(), expected_size=len(fx["expected"]))
    KVLossyCodec(bits=2.0).decode_state(payloads, tensors, [fx["positions"]], rope)
    expected = parse_seq_state(fx["expected"].tobytes(), has_cell_ext=False).tensors()
    for got, want in zip(tensors, expected):
        a, b = tensor_values(got), tensor_values(want)
        assert np.allclose(a, b, rtol=2e-3, atol=1e-4), got.name  # 1 ulp of f16 across platforms


@pytest.fixture(params=["bases", "predictors"])
def profiled(request, tiny_model_path, tmp_path, monkeypatch):
    """A tiny-model session and a profile derived from it (bases only, or with inter-layer predictors fitted
    on the same session), cached under a private $SEQKV_HOME."""
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    llm = make_llama(tiny_model_path)
    blob, state = session(llm)
    rope = rope_params(llm)
    profile = profile_from_state(state, rope)
    if request.param == "predictors":
        profile = with_predictors(profile, [coded_bodies(state, rope, profile)])
    return llm, blob, state, rope, profile


def test_profile_round_trip_within_rotated_error_bound(profiled):
    llm, blob, state, rope, profile = profiled
    payloads, out, tensors = lossy_round_trip(state, blob, KVLossyCodec(bits=4.0), rope, profile)
    positions = state.sections[0].streams[0].positions
    for src, dst, payload in zip(state.tensors(), tensors, payloads):
        at = fields_at(payload)["digest"]
        assert payload[1] & 2 and payload[at:at + 8] == profile.digest
        x, y = tensor_values(src, rope), tensor_values(dst, rope)
        if src.kind == "k":
            x, y = undo_rope(x, positions, rope), undo_rope(y, positions, rope)
        heads = x.shape[1] // profile.analysis[f"{src.kind}{src.layer}"].shape[1]
        synthesis = profile.synthesis[f"{src.kind}{src.layer}"]
        half = steps_of(payload).reshape(heads, -1) / 2
        bound = np.concatenate([np.abs(synthesis[h]).T @ half[h] for h in range(heads)])  # per channel
        assert (np.abs(y - x) <= bound + 4 * type_step(src, x) + 1e-3 * np.abs(x).max()).all(), src.name


def test_profile_is_found_by_digest_and_a_mismatch_refuses(profiled, tmp_path, monkeypatch):
    llm, blob, state, rope, profile = profiled
    codec = KVLossyCodec(bits=2.0)
    payloads = codec.encode_state(state, rope, profile=profile)
    positions = [state.sections[0].streams[0].positions]
    _, tensors = skeleton_layout(state.skeleton(), expected_size=len(blob))
    with pytest.raises(ModelMismatchError, match=profile.digest.hex()):  # not given and not cached
        codec.decode_state(payloads, tensors, positions, rope)
    other = KVProfile({k: b[:, :, ::-1] for k, b in profile.analysis.items()}, profile.variances)
    with pytest.raises(ModelMismatchError):
        codec.decode_state(payloads, tensors, positions, rope, profile=other)
    profile.save(tmp_path / "kv_profiles" / f"{profile.digest.hex()}.npz")
    assert KVProfile.load(tmp_path / "kv_profiles" / f"{profile.digest.hex()}.npz").digest == profile.digest
    out_cached, tensors = skeleton_layout(state.skeleton(), expected_size=len(blob))
    loads = []
    load = KVProfile.load.__func__
    monkeypatch.setattr(KVProfile, "load", classmethod(lambda cls, path: loads.append(path) or load(cls, path)))
    codec.decode_state(payloads, tensors, positions, rope)  # found in $SEQKV_HOME/kv_profiles by digest
    _, again = skeleton_layout(state.skeleton(), expected_size=len(blob))
    codec.decode_state(payloads, again, positions, rope)
    assert len(loads) == 1  # read once for all the state's tensors, and kept
    out_given, tensors = skeleton_layout(state.skeleton(), expected_size=len(blob))
    codec.decode_state(payloads, tensors, positions, rope, profile=profile)
    assert bytes(out_cached) == bytes(out_given)
    with pytest.raises(ValueError):
        KVLossyCodec(bits=2.0, version=1).encode_state(state, rope, profile=profile)


@pytest.mark.parametrize("profiled", ["predictors"], indirect=True)
def test_format_4_predicts_every_tensor_but_the_first_and_needs_its_predictors(profiled):
    llm, blob, state, rope, profile = profiled
    names = [t.name for t in state.tensors()]
    payloads = KVLossyCodec(bits=2.0).encode_state(state, rope, profile=profile)
    predicted = {name for name, p in zip(names, payloads) if p[1] & 8}
    assert predicted == set(names) - {"kv0.s0.l0.k"}
    older = KVLossyCodec(bits=2.0, version=3).encode_state(state, rope, profile=profile)
    assert not any(p[1] & 8 for p in older)  # format 3 on request: no prediction
    positions = [state.sections[0].streams[0].positions]
    bases_only = KVProfile(profile.analysis, profile.variances, synthesis=profile.synthesis)
    _, tensors = skeleton_layout(state.skeleton(), expected_size=len(blob))
    with pytest.raises(ModelMismatchError):  # the digest names the predictors too
        KVLossyCodec(bits=2.0).decode_state(payloads, tensors, positions, rope, profile=bases_only)
    bad = [bytes([3]) + p[1:] if p[1] & 8 else p for p in payloads]  # format 3 has no predicted payloads
    with pytest.raises(CorruptDataError):
        KVLossyCodec(bits=2.0).decode_state(bad, tensors, positions, rope, profile=profile)
    k0 = names.index("kv0.s0.l0.k")
    unrotated = KVLossyCodec(bits=2.0).encode_state(state, rope)[k0]  # layer 0's K without the profile's bases
    with pytest.raises(CorruptDataError, match="predicted from"):
        KVLossyCodec(bits=2.0).decode_state(payloads[:k0] + [unrotated] + payloads[k0 + 1:], tensors, positions,
                                            rope, profile=profile)


@pytest.mark.parametrize("profiled", ["predictors"], indirect=True)
@pytest.mark.parametrize("bits", [0.5, 1.0, 2.0, 4.0, 12.0])
def test_format_4_rate_control_hits_target_within_5_percent(profiled, bits):
    """The closed loop's rate search and the feedback while coding land on the target; the payloads decode."""
    llm, blob, state, rope, profile = profiled
    codec = KVLossyCodec(bits=bits)
    payloads, out, tensors = lossy_round_trip(state, blob, codec, rope, profile)
    n_values = sum(t.n_cells * t.n_channels for t in state.tensors())
    assert abs(8 * sum(map(len, payloads)) / n_values / bits - 1) <= 0.05
    assert codec.last_scale > 0 and all(np.isfinite(tensor_values(t)).all() for t in tensors)


def test_profile_costs_fewer_bits_for_the_same_error(profiled):
    llm, blob, state, rope, profile = profiled
    sizes = [sum(map(len, KVLossyCodec(max_kl=0.01).encode_state(state, rope, profile=p))) for p in (None, profile)]
    assert sizes[1] < sizes[0]


@pytest.mark.parametrize("version", [1, 2])
def test_older_versions_are_still_written_on_request(tiny_model_path, version):
    llm = make_llama(tiny_model_path)
    blob, state = session(llm)
    rope = rope_params(llm)
    payloads, out, tensors = lossy_round_trip(state, blob, KVLossyCodec(bits=3.0, version=version), rope)
    assert {p[0] for p in payloads} == {version}
    assert all(np.isfinite(tensor_values(t)).all() for t in tensors)


@pytest.mark.parametrize("version,fixture,profile_version", [(2, FIXTURE_V2, 1), (3, FIXTURE_V3, 1),
                                                              (4, FIXTURE_V4, 2), (4, FIXTURE_V4_P3, 3),
                                                              (5, FIXTURE_V5, 3), (6, FIXTURE_V6, 3)])
def test_profiled_format_fixtures_still_decode(tmp_path, monkeypatch, version, fixture, profile_version):
    """Written by format versions 2 to 6 with a profile (stored in the fixture; version 3: the keys' predictors
    reduced-rank); decoded values must never change."""
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    fx = np.load(fixture)
    rope = json.loads(str(fx["rope"]))
    profile_path = tmp_path / "profile.npz"
    profile_path.write_bytes(fx["profile"].tobytes())
    profile = KVProfile.load(profile_path)
    assert profile.version == profile_version
    payloads = [fx[f"payload_{i}"].tobytes() for i in range(int(fx["n_payloads"]))]
    assert {p[0] for p in payloads} == {version} and all(p[1] & 6 == 6 for p in payloads)  # rotated, recent window
    assert sum(p[1] & 8 != 0 for p in payloads) == (len(payloads) - 1 if version >= 4 else 0)  # all but layer 0's K
    out, tensors = skeleton_layout(fx["skeleton"].tobytes(), expected_size=len(fx["expected"]))
    KVLossyCodec(bits=2.0).decode_state(payloads, tensors, [fx["positions"]], rope, profile=profile)
    expected = parse_seq_state(fx["expected"].tobytes(), has_cell_ext=False).tensors()
    for got, want in zip(tensors, expected):
        assert np.allclose(tensor_values(got), tensor_values(want), rtol=2e-3, atol=1e-4), got.name


def test_query_metric_bases_whiten_scores_and_decorrelate():
    """Keys coded as z = k @ analysis: z's components are uncorrelated and |dz|^2 is the score error q.dk^2
    averaged over the queries and relative rotations (synthesis^T-congruence maps the metric to I)."""
    rng = np.random.default_rng(1)
    rope = {"type": "neox", "n_rot": 16, "freq_base": 1e4, "freq_scale": 1.0, "head_dim_k": 16}
    queries = rng.standard_normal((300, 4 * 16)) * np.linspace(0.2, 3, 64) + 0.5  # 4 query heads, 2 KV heads
    keys = rng.standard_normal((400, 2 * 16)) @ np.kron(np.eye(2), rng.standard_normal((16, 16)))
    metric = query_metric(queries, rope, n_head_kv=2)
    assert metric.shape == (2, 16, 16) and np.allclose(metric, metric.transpose(0, 2, 1))
    analysis, synthesis, variances = metric_bases(keys, metric)
    for h in range(2):
        assert np.allclose(analysis[h] @ synthesis[h], np.eye(16), atol=1e-4)
        assert np.allclose(synthesis[h] @ metric[h] @ synthesis[h].T, np.eye(16), atol=1e-3 * np.abs(metric[h]).max())
        z = (keys[:, 16 * h:16 * h + 16] - keys[:, 16 * h:16 * h + 16].mean(0)) @ analysis[h]
        cov = z.T @ z / len(z)
        assert np.allclose(cov, np.diag(variances[h]), atol=1e-3 * variances[h].max())
        assert (np.diff(variances[h]) <= 1e-6 * variances[h].max()).all()


def test_profile_is_built_from_the_model_once_and_cached(tiny_model_path, tmp_path, monkeypatch):
    from seqkv_edge.calibrate.profile import load_or_build_profile

    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    text = tmp_path / "calibration.txt"
    text.write_text("Calibration text for the model's KV profile: keys, values and the queries that read them. " * 6)
    profile = load_or_build_profile(tiny_model_path, text_path=text)
    assert profile.meta["key_metric"] == "query"  # the eval callback saw every layer's queries
    n_layers = len({key[1:] for key in profile.analysis})
    assert n_layers >= 1 and set(profile.analysis) == {f"{kind}{layer}" for kind in "kv" for layer in range(n_layers)}
    again = load_or_build_profile(tiny_model_path)  # from $SEQKV_HOME/kv_profiles, no prefill
    assert again.digest == profile.digest and (tmp_path / "kv_profiles" / f"{profile.digest.hex()}.npz").is_file()


def test_native_format_3_coder_round_trips_indices_with_escapes():
    """lossy3_encode quantizes and codes; lossy3_decode gives back index * step exactly, outliers (escapes) and
    all-zero channels included; lossy3_cost predicts the coded size; damaged streams are refused."""
    from seqkv_edge.native import require

    ffi, lib = require()
    rng = np.random.default_rng(3)
    n_rows, n_ch = 203, 24
    x = (rng.standard_normal((n_rows, n_ch)) * np.geomspace(0.01, 40, n_ch)).astype(np.float32)
    x[5, 3], x[7, 4], x[9, 23], x[:, 0] = 3000.0, -31999.0, 1e9, 0.0  # escapes, a clamp, a silent channel
    inv = np.full(n_ch, 0.5, np.float32)
    cap = lib.lossy3_encode_bound(n_rows, n_ch)
    out = np.zeros(cap, np.uint8)
    step = np.full(n_ch, 2.0, np.float32)
    rec = np.empty_like(x)  # what the decoder will give back, written by the encoder in the same pass
    n = lib.lossy3_encode(ffi.from_buffer("float[]", x), n_rows, n_ch, ffi.from_buffer("float[]", inv),
                          ffi.from_buffer("uint8_t[]", out), cap, ffi.from_buffer("float[]", step),
                          ffi.from_buffer("float[]", rec))
    assert 0 < n < x.size  # far below 8 bits per value
    y = np.empty_like(x)
    coded = out[:n].copy()
    assert lib.lossy3_decode(ffi.from_buffer("uint8_t[]", coded), n, n_rows, n_ch, ffi.from_buffer("float[]", step),
                             ffi.from_buffer("float[]", y)) == 0
    expected = np.clip(np.rint(x * 0.5), -32000, 32000) * 2.0
    assert np.array_equal(y, expected) and np.array_equal(rec, expected)
    predicted = lib.lossy3_cost(ffi.from_buffer("float[]", x), n_rows, n_ch, ffi.from_buffer("float[]", inv), 1)
    assert abs(predicted / (8 * n) - 1) < 0.01
    for bad in (coded[:-2], np.concatenate([coded[:-6], np.zeros(6, np.uint8)])):
        assert lib.lossy3_decode(ffi.from_buffer("uint8_t[]", bad), len(bad), n_rows, n_ch,
                                 ffi.from_buffer("float[]", step), ffi.from_buffer("float[]", y)) != 0


def test_repeated_sink_rows_and_foreign_head_sizes_are_refused(tiny_model_path):
    """A payload naming one cell twice as a sink, and rope parameters whose head size does not divide a quantized
    tensor's channels, end in clear errors before anything is sized by them."""
    from seqkv_edge.codecs.kv_lossy.tensor import _HEADER, _decode_tensor
    from seqkv_edge.errors import UnsupportedStateError
    from seqkv_edge.state.values import _rotation_size

    llm = make_llama(tiny_model_path)
    blob, state = session(llm)
    rope = rope_params(llm)
    tensor = state.tensors()[0]
    payload = KVLossyCodec(bits=2.0).encode_state(state, rope)[0]
    version, flags, n_heads, n_cells, n_ch, n_sink, n_coded = _HEADER.unpack_from(payload)
    at = fields_at(payload)["step"] + 2 * n_ch  # the sink rows follow the steps
    row = payload[at:at + 4]
    doubled = bytearray(_HEADER.pack(version, flags, n_heads, n_cells, n_ch, n_sink + 1, n_coded))
    doubled += payload[_HEADER.size:at] + row + row + payload[at + 4:at + 4 + 2 * n_ch]
    doubled += payload[at + 4:at + 4 + 2 * n_ch] + payload[at + 4 + 2 * n_ch:]
    _, tensors = skeleton_layout(state.skeleton(), expected_size=len(blob))
    with pytest.raises(CorruptDataError, match="sink rows"):
        _decode_tensor(bytes(doubled), tensors[0], state.sections[0].streams[0].positions, rope)
    with pytest.raises(UnsupportedStateError, match="does not divide"):
        _rotation_size(tensor, 64 * tensor.n_channels)


# ---- format 6: the segment coder (format 2) under format 5's pipeline ----

@pytest.mark.parametrize("profiled", ["predictors"], indirect=True)
def test_format_6_closed_loop_reconstructs_what_the_decoder_gets(profiled, monkeypatch):
    """The encoder predicts each tensor from the rows the decoder will have: index * step of what it coded,
    bit for bit (segcode.quantize, then one float multiply), so the loop is closed exactly."""
    from seqkv_edge.codecs.kv_lossy import tensor as lossy_tensor

    llm, blob, state, rope, profile = profiled
    encoded, decoded = {}, {}
    encode, entropy_decode = lossy_tensor._Prepared.encode, lossy_tensor._entropy_decode

    def spy_encode(self, scale, weights=None, residual=None, decoded_rows=False):
        result = encode(self, scale, weights, residual, decoded_rows)
        if decoded_rows:
            encoded[self.name] = result[1].copy()
        return result

    def spy_decode(payload, tensor, coder=None):
        body = entropy_decode(payload, tensor, coder)
        decoded[tensor.name] = body.body.copy()
        return body

    monkeypatch.setattr(lossy_tensor._Prepared, "encode", spy_encode)
    monkeypatch.setattr(codec_module, "_entropy_decode", spy_decode)
    payloads, out, tensors = lossy_round_trip(state, blob, KVLossyCodec(bits=2.0, version=6), rope, profile)
    assert {p[0] for p in payloads} == {6} and sum(p[1] & 8 != 0 for p in payloads) == len(payloads) - 1
    assert encoded and set(encoded) <= set(decoded)
    for name, rows in encoded.items():
        assert np.array_equal(rows, decoded[name]), name


@pytest.mark.parametrize("profiled", ["predictors"], indirect=True)
@pytest.mark.parametrize("bits", [1.0, 2.0, 4.0])
def test_format_6_rate_control_and_thread_count(profiled, monkeypatch, bits):
    """Format 6 lands on the target rate, and neither the coding threads nor the decoding ones change a byte."""
    llm, blob, state, rope, profile = profiled
    n_values = sum(t.n_cells * t.n_channels for t in state.tensors())
    runs = []
    for cpus in (1, 3):
        monkeypatch.setattr("os.cpu_count", lambda cpus=cpus: cpus)
        payloads, out, tensors = lossy_round_trip(state, blob, KVLossyCodec(bits=bits, version=6), rope, profile)
        runs.append((payloads, bytes(out)))
    assert runs[0] == runs[1]
    assert abs(8 * sum(map(len, runs[0][0])) / n_values / bits - 1) <= 0.05


def test_device_is_a_setting_not_part_of_the_config(monkeypatch):
    from seqkv_edge.codecs.kv_lossy import backend

    assert KVLossyCodec(bits=2.0, version=6, device="cpu").get_config() == KVLossyCodec(bits=2.0, version=6).get_config()
    assert "device" not in KVLossyCodec(bits=2.0, device="cuda").get_config()
    with pytest.raises(ValueError, match="device"):
        KVLossyCodec(bits=2.0, device="metal-ish")
    assert isinstance(backend.for_state("auto", 10 << 20), backend.CpuSegments)  # small states stay on the CPU
    monkeypatch.setattr(backend, "_cuda", None)
    monkeypatch.setattr(backend, "_nvcc", lambda: None)
    with pytest.raises(RuntimeError, match="nvcc"):
        backend.for_state("cuda", 10 << 20)
    monkeypatch.setattr(backend, "_usable", None)
    assert isinstance(backend.for_state("auto", 1 << 40), backend.CpuSegments)  # no CUDA: the CPU


@pytest.mark.parametrize("profiled", ["predictors"], indirect=True)
def test_format_6_on_the_cuda_backend_gives_the_cpu_bytes(profiled, monkeypatch, tmp_path):
    """device="cuda" runs the segment coder's kernels (here their host emulation): the same payloads, and each side
    decodes the other's."""
    import shutil

    from seqkv_edge.codecs import segcode_cuda
    from seqkv_edge.codecs.kv_lossy import backend

    if not shutil.which("g++"):
        pytest.skip("g++ is needed to build the kernels' host emulation")
    llm, blob, state, rope, profile = profiled
    cpu_payloads, cpu_out, _ = lossy_round_trip(state, blob, KVLossyCodec(bits=2.0, version=6, device="cpu"), rope,
                                                profile)
    emulated = segcode_cuda.CudaSegcode(segcode_cuda.build(tmp_path, emulate=True))
    monkeypatch.setattr(backend, "_cuda", backend.CudaSegments(emulated))
    gpu_payloads, gpu_out, _ = lossy_round_trip(state, blob, KVLossyCodec(bits=2.0, version=6, device="cuda"), rope,
                                                profile)
    assert gpu_payloads == cpu_payloads and bytes(gpu_out) == bytes(cpu_out)
