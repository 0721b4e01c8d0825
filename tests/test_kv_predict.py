"""Inter-layer predictors (format 4): fitting, the coding order, and their place in the KV profile."""
from __future__ import annotations

import numpy as np

from seqkv_edge.fingerprint import model_fingerprint
from seqkv_edge.kv_predict import coding_order, feature_keys, features, fit_predictors, predict
from seqkv_edge.kv_profile import KVProfile, load_or_build_profile, profile_dir


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
    assert loaded.predictor("v", 0, 8, 8) is not None and loaded.predictor("v", 0, 16, 8) is None


def test_a_cached_version_1_profile_is_rebuilt_with_predictors_and_kept(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    text = tmp_path / "calibration.txt"
    text.write_text("Calibration text for the model's KV profile: keys, values and the queries that read them. " * 6)
    built = load_or_build_profile(tiny_model_path, text_path=text)
    assert built.predictors and built.meta["predictor_features"]
    old = KVProfile(built.analysis, built.variances, built.meta, built.synthesis)  # as version 1 wrote it
    old.save(profile_dir() / f"{old.digest.hex()}.npz")
    index = profile_dir() / f"{model_fingerprint(tiny_model_path)}.digest"
    index.write_text(old.digest.hex())
    rebuilt = load_or_build_profile(tiny_model_path, text_path=text)
    assert rebuilt.predictors and rebuilt.digest == built.digest  # the same calibration gives the same profile
    assert index.read_text() == built.digest.hex()
    assert KVProfile.load(profile_dir() / f"{old.digest.hex()}.npz").digest == old.digest  # old payloads decode
