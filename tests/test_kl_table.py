"""The lossy tier's rate-quality table (codecs.kv_lossy.kl_table, calibrate.kl_table): interpolation and its margin,
storage keyed by profile and weights, measurement on the tiny model, and the codec's use of it (max_kl, warnings)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from seqkv_edge.calibrate import kl_table as measure
from seqkv_edge.calibrate.profile import load_or_build_profile
from seqkv_edge.codecs.kv_lossy import codec as lossy
from seqkv_edge.codecs.kv_lossy.kl_table import KLTable, kl_table_path, load_kl_table, save_kl_table
from seqkv_edge.config import SeqKV
from seqkv_edge.errors import CorruptDataError
from seqkv_edge.fingerprint import model_fingerprint
from seqkv_edge.state.blob import parse_seq_state, read_seq_state
from seqkv_edge.state.rope import rope_params
from seqkv_edge.textdata import BUNDLED, text_path

POINTS = [(0.1, 0.004, 3.0), (0.2, 0.006, 2.1), (0.4, 0.014, 1.4), (0.8, 0.05, 0.8)]


def test_table_interpolates_log_log_and_inverts():
    t = KLTable(POINTS, margin=1.0)
    for s, kl, bits in POINTS:
        assert t.kl_at(s) == pytest.approx(kl) and t.scale_for(kl) == pytest.approx(s)
        assert t.bits_for(kl) == pytest.approx(bits)
    mid = t.kl_at(np.sqrt(0.2 * 0.4))
    assert mid == pytest.approx(np.sqrt(0.006 * 0.014))  # geometric midpoint: log-log interpolation
    assert t.scale_for(0.1) > 0.8 and t.kl_at(1.6) > 0.05  # beyond the points: the end slopes
    assert t.scale_for(0.001) < 0.1 and t.floor == pytest.approx(0.004)


def test_margin_counts_the_excess_over_the_floor_and_noise_cannot_make_it_fall():
    t = KLTable(POINTS, margin=0.5)
    assert t.kl_at(0.1) == pytest.approx(0.004)  # the floor itself is not scaled
    assert t.kl_at(0.4) == pytest.approx(0.004 + 2 * 0.010)
    assert t.scale_for(0.024) == pytest.approx(0.4)
    noisy = KLTable([(0.1, 0.005, 3.0), (0.2, 0.004, 2.0), (0.4, 0.02, 1.0)], margin=1.0)
    assert noisy.kl_at(0.2) == pytest.approx(0.005)  # a dip is noise: KL never falls as the step grows
    assert noisy.scale_for(0.005) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        KLTable([(0.1, 0.004, 3.0)])
    with pytest.raises(ValueError):
        KLTable([(0.1, 0.004, 3.0), (0.2, 0.0, 2.0)])


class _Profile:
    digest = bytes(8)
    step_weights = None


def test_table_is_stored_for_one_profile_weights_and_format(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    profile = _Profile()
    path = save_kl_table("f" * 32, KLTable(POINTS, {"texts": ["x"]}), profile)
    assert path == kl_table_path("f" * 32)
    loaded = load_kl_table("f" * 32, profile)
    assert loaded.points == sorted(POINTS) and loaded.meta["texts"] == ["x"]
    profile.step_weights = {"k": [2.0], "v": [1.0]}  # new weights: the table no longer holds
    assert load_kl_table("f" * 32, profile) is None
    path.write_text("{not json")
    with pytest.raises(CorruptDataError, match="delete the file"):
        load_kl_table("f" * 32, _Profile())
    doc = {"version": 1, "key": {"x": 1}, "points": POINTS}
    path.write_text(json.dumps(doc))
    assert load_kl_table("f" * 32, _Profile()) is None


def test_calibration_texts_fall_back_to_the_package_copies(tmp_path):
    assert text_path(tmp_path / "missing" / "Apache-2.0") == BUNDLED / "Apache-2.0"
    assert text_path(tmp_path / "nothing-like-it") == tmp_path / "nothing-like-it"
    assert {p.name for p in BUNDLED.iterdir()} >= {"Apache-2.0", "GFDL-1.3", "LGPL-2.1"}


def test_tiny_model_gets_a_measured_table_on_first_use(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    profile = load_or_build_profile(tiny_model_path)
    table = profile.kl_table
    assert table is not None and len(table.points) >= len(measure.SCALES)
    scales, kls, bits = np.array(table.points).T
    assert np.all(np.diff(bits) < 0)  # coarser steps, fewer bits
    assert kls[-1] > kls[0]  # ... and more damage
    assert kl_table_path(model_fingerprint(tiny_model_path)).is_file()
    # cached: the second call measures nothing
    monkeypatch.setattr(measure, "measure_kl_table", lambda *a, **k: pytest.fail("measured again"))
    assert load_or_build_profile(tiny_model_path).kl_table.points == table.points


@pytest.fixture()
def tiny_state(tiny_model_path, tmp_path, monkeypatch):
    from seqkv_edge.hardware import load_plain_llama

    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    llm = load_plain_llama(model_path=tiny_model_path, n_ctx=512, verbose=False)
    llm.eval(llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 6))
    profile = load_or_build_profile(llm)
    return parse_seq_state(bytes(read_seq_state(llm.ctx)), model=llm), rope_params(llm), profile


def test_max_kl_codes_at_the_scale_the_table_gives(tiny_state):
    state, rope, profile = tiny_state
    codec = lossy.KVLossyCodec(max_kl=0.02)
    codec.encode_state(state, rope, profile=profile)
    assert codec.last_scale == pytest.approx(profile.kl_table.scale_for(0.02))
    assert codec.last_expected_kl == pytest.approx(0.02)
    tighter = lossy.KVLossyCodec(max_kl=0.005)
    sizes = [sum(map(len, c.encode_state(state, rope, profile=profile))) for c in (codec, tighter)]
    assert sizes[1] > sizes[0]


def test_a_bits_target_that_leaves_the_model_poor_says_so(tiny_state, caplog):
    state, rope, profile = tiny_state
    lossy._SAID.clear()
    with caplog.at_level(logging.WARNING, logger=lossy.__name__):
        codec = lossy.KVLossyCodec(bits=1.0)
        codec.encode_state(state, rope, profile=profile)
        codec.encode_state(state, rope, profile=profile)  # once per model and rate ...
        profile.kl_table = KLTable(profile.kl_table.points, profile.kl_table.meta)
        codec.encode_state(state, rope, profile=profile)  # ... also when each save loads the table anew
    poor = [r for r in caplog.records if "max_kl=0.01 takes about" in r.getMessage()]
    assert codec.last_expected_kl > lossy.POOR_KL and len(poor) == 1


def test_lossy_defaults_aim_at_a_quality_not_a_rate():
    assert SeqKV(kv="lossy").max_kl == 0.01 and SeqKV(kv="lossy").bits is None
    assert SeqKV(kv="lossy", model_profile=False).bits == 3.0
    assert lossy.KVLossyCodec.from_config(lossy.KVLossyCodec(scale=0.2).get_config()).scale == 0.2
    with pytest.raises(ValueError):
        lossy.KVLossyCodec(bits=2.0, scale=0.2)
