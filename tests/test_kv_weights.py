"""Per-layer step weights of the lossy tier (seqkv_edge.calibrate.weights): allocation, storage beside the KV profile,
their effect on the coded steps, and ``seqkv calibrate`` end to end on the tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from lossy_payload import steps_of

from seqkv_edge.calibrate import weights as kv_weights
from seqkv_edge.calibrate.profile import load_or_build_profile
from seqkv_edge.codecs.kv_lossy.codec import KVLossyCodec
from seqkv_edge.errors import CorruptDataError
from seqkv_edge.fingerprint import model_fingerprint
from seqkv_edge.state.blob import parse_seq_state, read_seq_state
from seqkv_edge.state.rope import rope_params

GRID = 2.0 ** kv_weights.GRID_OCTAVES


def synthetic(sensitivities) -> kv_weights.Sensitivity:
    """Heads of k0, v0, k1, v1, ... (two per tensor) whose MSE grows as step^2 and whose rate falls 1 bit per
    doubling."""
    a = np.asarray(sensitivities, float)
    n = len(a)
    return kv_weights.Sensitivity(
        kinds=[("k", "v")[i // 2 % 2] for i in range(n)], layers=[i // 4 for i in range(n)],
        heads=[i % 2 for i in range(n)],
        sensitivity=a, distortion=a[:, None] * GRID[None, :] ** 2 / 12, rate=np.tile(2.0 - np.log2(GRID), (n, 1)),
        texts=["synthetic"], probe_kl=a[None, :])


def test_allocation_gives_sensitive_heads_finer_steps_at_the_same_rate():
    sens = synthetic([16.0, 1.0, 1.0, 1 / 16])  # k0 heads 0, 1; v0 heads 0, 1
    assert sens.names == ["k0.h0", "k0.h1", "v0.h0", "v0.h1"]
    full = kv_weights.allocate(sens, shrink=1.0)
    w = np.array(full["k"][0] + full["v"][0])
    assert np.isclose(np.log(w).mean(), 0, atol=1e-3)  # geometric mean 1: the rate is unchanged
    # equal slopes: a * step^2 equal, so 16x the sensitivity gets a 4x finer step (to the grid's quarter octave)
    assert np.allclose(np.log2(w), [-2, 0, 0, 2], atol=0.25)
    half = kv_weights.allocate(sens, shrink=0.5)
    assert np.allclose(np.log2([half["k"][0][0], half["v"][0][1]]), [-1, 1], atol=0.13)
    flat = kv_weights.allocate(sens, shrink=0.0)
    assert {w for ws in flat["k"] + flat["v"] for w in ws} == {1.0}


def test_weights_are_saved_beside_the_profile_and_attached_to_it(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    fp = model_fingerprint(tiny_model_path)
    assert kv_weights.load_weights(fp) is None
    text = tmp_path / "calibration.txt"
    text.write_text("Calibration text for the model's KV profile: keys, values and the queries that read them. " * 6)
    assert load_or_build_profile(tiny_model_path, text_path=text).step_weights is None
    weights = {"k": [0.5, [2.0, 1.0]], "v": [1.0, 1.0]}  # a layer's heads may differ
    path = kv_weights.save_weights(fp, weights, {"texts": ["x"]})
    assert path == tmp_path / "kv_profiles" / f"{fp}.weights.json"
    assert kv_weights.load_weights(fp) == weights
    assert load_or_build_profile(tiny_model_path).step_weights == weights
    path.write_text(json.dumps({"version": 1, "model_fingerprint": "0" * 32, "weights": weights}))
    with pytest.raises(CorruptDataError, match="seqkv calibrate"):  # another model's weights
        kv_weights.load_weights(fp)
    path.write_text("{not json")
    with pytest.raises(CorruptDataError):
        kv_weights.load_weights(fp)


def test_profile_weights_steer_the_steps_and_explicit_weights_win(tiny_model_path, tmp_path, monkeypatch):
    from llama_cpp import Llama

    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    llm = Llama(model_path=tiny_model_path, n_ctx=512, n_batch=128, verbose=False, n_threads=2)
    llm.eval(llm.tokenize(b"Steps follow the weights of each layer's keys and values. " * 2))
    state = parse_seq_state(bytes(read_seq_state(llm.ctx)), model=llm)
    rope = rope_params(llm)
    text = tmp_path / "calibration.txt"
    text.write_text("Calibration text for the model's KV profile: keys, values and the queries that read them. " * 6)
    profile = load_or_build_profile(tiny_model_path, text_path=text)
    n_layer = len(state.sections[0].streams[0].k)
    weights = {"k": [4.0] + [1.0] * (n_layer - 1), "v": [1.0] * n_layer}

    plain = KVLossyCodec(max_kl=0.01).encode_state(state, rope, profile=profile)
    profile.step_weights = weights
    weighted = KVLossyCodec(max_kl=0.01).encode_state(state, rope, profile=profile)
    explicit = KVLossyCodec(max_kl=0.01, weights={}).encode_state(state, rope, profile=profile)
    k0 = [t.name for t in state.tensors()].index("kv0.s0.l0.k")
    assert len(weighted[k0]) < len(plain[k0])  # 4x coarser steps, fewer bytes
    assert np.allclose(steps_of(weighted[k0]), 4 * steps_of(plain[k0]), rtol=2e-3)
    # the other tensors keep their steps (format 4 predicts them from k0, so their bytes may move)
    assert all(np.array_equal(steps_of(a), steps_of(b)) for i, (a, b) in enumerate(zip(weighted, plain)) if i != k0)
    assert explicit == plain
    n_heads = profile.analysis["k0"].shape[0]
    per_head = {"k": [[1.0] * (n_heads - 1) + [2.0]]}  # only layer 0's last key head coarser
    head_steps = steps_of(KVLossyCodec(max_kl=0.01, weights=per_head).encode_state(state, rope, profile=profile)[k0])
    ratio = (head_steps / steps_of(plain[k0])).reshape(n_heads, -1)
    assert np.allclose(ratio[:-1], 1.0) and np.allclose(ratio[-1], 2.0, rtol=2e-3)
    with pytest.raises(ValueError, match="heads"):
        KVLossyCodec(max_kl=0.01, weights={"k": [[1.0] * (n_heads + 1)]}).encode_state(state, rope, profile=profile)
    with pytest.raises(ValueError):
        KVLossyCodec(bits=2.0, weights={"k": [0.0]})


def test_seqkv_calibrate_probes_every_tensor_and_writes_weights(tiny_model_path, tmp_path, monkeypatch, capsys):
    from seqkv_edge.cli import main

    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    text = tmp_path / "probe.txt"
    text.write_text("It was the best of times, it was the worst of times, it was the age of wisdom. " * 4)
    assert main(["calibrate", "--model", tiny_model_path, "--texts", str(text), "--n-context", "96",
                 "--n-eval", "48"]) == 0
    out = capsys.readouterr().out
    weights = kv_weights.load_weights(model_fingerprint(tiny_model_path))
    n_layer = len(weights["k"])
    flat = [w for ws in weights["k"] + weights["v"] for w in ws]
    assert n_layer >= 1 and len(weights["v"]) == n_layer and all(w > 0 for w in flat)
    assert np.isclose(np.log(flat).mean(), 0, atol=1e-3)
    doc = json.loads((tmp_path / "kv_profiles" / f"{model_fingerprint(tiny_model_path)}.weights.json").read_text())
    sens = doc["sensitivity"]
    n_head = len(weights["k"][0])
    assert set(sens) == {f"{k}{i}.h{h}" for k in "kv" for i in range(n_layer) for h in range(n_head)}
    assert all(a > 0 for a in sens.values())

    def weight(name):
        layer, head = name[1:].split(".h")
        return weights[name[0]][int(layer)][int(head)]

    assert weight(max(sens, key=sens.get)) <= weight(min(sens, key=sens.get))
    assert "step weights written to" in out and out.count("\nk") >= n_layer * n_head

    # --sensitivity: the same sensitivities, the current coder's grids, no probes
    from seqkv_edge.calibrate.quality import QualityBench

    monkeypatch.setattr(QualityBench, "evaluate", lambda *a, **k: pytest.fail("re-derived weights probed"))
    source = tmp_path / "kv_profiles" / f"{model_fingerprint(tiny_model_path)}.weights.json"
    again = tmp_path / "again.json"
    assert main(["calibrate", "--model", tiny_model_path, "--texts", str(text), "--n-context", "96",
                 "--sensitivity", str(source), "--out", str(again)]) == 0
    redone = json.loads(again.read_text())
    assert redone["sensitivity"] == sens and redone["model_fingerprint"] == model_fingerprint(tiny_model_path)
    assert {k: len(ws) for k, ws in redone["weights"].items()} == {"k": n_layer, "v": n_layer}
    other = dict(doc, model_fingerprint="0" * 32)
    (tmp_path / "other.json").write_text(json.dumps(other))
    capsys.readouterr()
    assert main(["calibrate", "--model", tiny_model_path, "--texts", str(text), "--n-context", "96",
                 "--sensitivity", str(tmp_path / "other.json"), "--out", str(again)]) == 2
    assert "measured on model" in capsys.readouterr().err


def test_seqkv_calibrate_refuses_missing_or_short_texts_before_probing(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    short = tmp_path / "short.txt"
    short.write_text("Too short to probe.")
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        kv_weights.measure_sensitivity(tiny_model_path, [str(tmp_path / "nowhere.txt")], progress=False)
    with pytest.raises(ValueError, match="short.txt has"):
        kv_weights.measure_sensitivity(tiny_model_path, [str(short)], n_context=96, n_eval=48, progress=False)
    assert not (tmp_path / "kv_profiles").exists()  # refused before the profile was built
