"""Inter-layer predictors (format 4): fitting, the coding order, and their place in the KV profile."""
from __future__ import annotations

import numpy as np
import pytest

from seqkv_edge.calibrate.profile import load_or_build_profile
from seqkv_edge.codecs.kv_lossy.predict import (
    coding_order,
    feature_keys,
    features,
    fit_predictors,
    predict,
)
from seqkv_edge.codecs.kv_lossy.profile import KVProfile, profile_dir
from seqkv_edge.fingerprint import model_fingerprint


def synthetic_bodies(rng, n_rows=20000, n_layers=3, width=8, innovation=1.0):
    """Layer l's K and V are fixed linear maps of layer l-1's (V also of its own K) plus what is new in them."""
    maps = {}
    bodies = {("k", 0): rng.standard_normal((n_rows, width)), ("v", 0): rng.standard_normal((n_rows, width))}
    for layer in range(n_layers):
        for kind in "kv":
            keys = feature_keys(kind, layer)
            if not keys:
                continue
            w = rng.standard_normal((width * len(keys), width)) / np.sqrt(width * len(keys))
            maps[f"{kind}{layer}"] = w
            x = np.hstack([bodies[k] for k in keys])
            bodies[kind, layer] = x @ w + innovation * rng.standard_normal((n_rows, width))
    return bodies, maps


def test_predictors_recover_a_linear_relation_between_layers():
    rng = np.random.default_rng(0)
    bodies, maps = synthetic_bodies(rng)
    fitted = fit_predictors([bodies], ridge=1e-6)
    assert set(fitted) == set(maps) == {"v0", "k1", "v1", "k2", "v2"}  # layer 0's K has nothing before it
    for key, w in maps.items():
        assert fitted[key].shape == w.shape and np.allclose(fitted[key], w, atol=0.04), key
    x = features(bodies, "v", 1)
    assert x.shape == (20000, 24) and np.allclose(predict(bodies, "v", 1, fitted["v1"]), x @ fitted["v1"], atol=1e-5)
    assert features(bodies, "k", 0) is None and features({("k", 0): bodies["k", 0]}, "v", 1) is None


def test_coding_order_puts_every_tensor_after_its_features():
    order = coding_order([("v", 2), ("k", 1), ("v", 0), ("k", 2), ("k", 0), ("v", 1)])
    assert order == [("k", 0), ("v", 0), ("k", 1), ("v", 1), ("k", 2), ("v", 2)]
    for i, (kind, layer) in enumerate(order):
        assert all(order.index(key) < i for key in feature_keys(kind, layer))


def test_reduced_rank_predictors_keep_a_low_rank_relation():
    rng = np.random.default_rng(2)
    bodies, _ = synthetic_bodies(rng, n_layers=2)
    x = features(bodies, "k", 1)
    low = rng.standard_normal((16, 2)) @ rng.standard_normal((2, 8)) / 4  # layer 1's K: a rank-2 map of layer 0
    bodies["k", 1] = x @ low + 0.1 * rng.standard_normal((len(x), 8))
    fitted = fit_predictors([bodies], ridge=1e-6, ranks={"k": 2})
    assert fitted["k1"].shape == (16, 2) and fitted["k1_out"].shape == (2, 8)
    assert "v1_out" not in fitted and fitted["v1"].shape == (24, 8)  # values keep the full rank
    assert np.allclose(fitted["k1"] @ fitted["k1_out"], low, atol=0.01)
    assert np.allclose(predict(bodies, "k", 1, fitted["k1"], fitted["k1_out"]), x @ fitted["k1"] @ fitted["k1_out"],
                       atol=1e-5)
    full = fit_predictors([bodies], ridge=1e-6, ranks={})
    assert full["k1"].shape == (16, 8) and "k1_out" not in full


def test_predictors_are_hashed_saved_and_loaded(tmp_path):
    rng = np.random.default_rng(1)
    analysis = {"k0": rng.standard_normal((2, 4, 4)).astype(np.float32)}
    variances = {"k0": np.ones((2, 4), np.float32)}
    v1 = KVProfile(analysis, variances)
    v2 = KVProfile(analysis, variances, predictors={"v0": rng.standard_normal((8, 8)).astype(np.float32)})
    assert KVProfile(analysis, variances, predictors={}).digest == v1.digest  # version 1 digests never move
    assert v2.digest != v1.digest
    v2.save(tmp_path / "p.npz")
    loaded = KVProfile.load(tmp_path / "p.npz")
    assert loaded.digest == v2.digest and loaded.meta["profile_version"] == 2
    assert np.array_equal(loaded.predictors["v0"], v2.predictors["v0"])
    assert loaded.predictor("v", 0, 8, 8)[1] is None and loaded.predictor("v", 0, 16, 8) is None
    reduced = {"v0": rng.standard_normal((8, 3)).astype(np.float32),
               "v0_out": rng.standard_normal((3, 8)).astype(np.float32)}
    v3 = KVProfile(analysis, variances, {"predictor_ranks": {"v": 3}}, predictors=reduced)
    v3.save(tmp_path / "p3.npz")
    loaded = KVProfile.load(tmp_path / "p3.npz")
    assert loaded.meta["profile_version"] == 3 and loaded.digest == v3.digest != v2.digest
    w, w_out = loaded.predictor("v", 0, 8, 8)
    assert np.array_equal(w, reduced["v0"]) and np.array_equal(w_out, reduced["v0_out"])
    assert loaded.predictor("v", 0, 8, 4) is None


@pytest.mark.parametrize("old_version", [1, 2, 3])
def test_a_cached_older_profile_is_rebuilt_with_predictors_and_kept(tiny_model_path, tmp_path, monkeypatch,
                                                                     old_version):
    """Version 1 (no predictors), 2 (full-rank ones) or 3 with other ranks than this seqkv_edge fits."""
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    text = tmp_path / "calibration.txt"
    text.write_text("Calibration text for the model's KV profile: keys, values and the queries that read them. " * 6)
    built = load_or_build_profile(tiny_model_path, text_path=text)
    assert built.version == 3 and built.meta["predictor_features"]
    assert any(key.endswith("_out") for key in built.predictors)  # the tiny model's keys: rank 48 of 64
    meta = {k: v for k, v in built.meta.items() if k != "predictor_ranks"}
    if old_version == 3:
        meta["predictor_ranks"] = {"k": 8}
    old = KVProfile(built.analysis, built.variances, meta, built.synthesis,  # as version 1 / 2 wrote it
                    None if old_version == 1 else {"v0": np.eye(64, dtype=np.float32)})
    assert old.version == old_version
    old.save(profile_dir() / f"{old.digest.hex()}.npz")
    index = profile_dir() / f"{model_fingerprint(tiny_model_path)}.digest"
    index.write_text(old.digest.hex())
    rebuilt = load_or_build_profile(tiny_model_path, text_path=text)
    assert rebuilt.version == 3 and rebuilt.digest == built.digest  # the same calibration gives the same profile
    assert index.read_text() == built.digest.hex()
    assert KVProfile.load(profile_dir() / f"{old.digest.hex()}.npz").digest == old.digest  # old payloads decode
