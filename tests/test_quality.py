"""The quality harness on the tiny model: a lossless restore scores exactly zero, a lossy one scores > 0."""
from __future__ import annotations

import numpy as np
import pytest

from seqkv_edge.calibrate.quality import QualityBench, compare
from seqkv_edge.cli.quality import main, run_quality

TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 4


@pytest.fixture(scope="module")
def text_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(TEXT)
    return str(path)


def test_lossless_restore_scores_zero_and_lossy_scores_damage(tiny_model_path, text_path):
    from seqkv_edge.codecs.kv_lossy.codec import KVLossyCodec

    bench = QualityBench(tiny_model_path, text_path, n_context=96, n_eval=48, n_greedy=8)
    exact = bench.evaluate(bench.blob)
    assert exact["kl_mean"] == 0.0 and exact["top1_agreement"] == 1.0 and exact["greedy_agreement"] == 1.0
    assert exact["ppl_change"] == 0.0 and exact["n_eval"] == 47 and exact["n_greedy"] == 8
    coarse, _ = bench.lossy_blob(KVLossyCodec(bits=0.5))
    fine, _ = bench.lossy_blob(KVLossyCodec(bits=8.0))
    kl_coarse, kl_fine = bench.evaluate(coarse)["kl_mean"], bench.evaluate(fine)["kl_mean"]
    assert kl_coarse > kl_fine >= 0.0


def test_run_quality_reports_rate_and_quality(tiny_model_path, text_path, capsys):
    result = run_quality(tiny_model_path, text_path, bits=2.0, n_context=96, n_eval=48, n_greedy=4)
    assert abs(result["bits_per_value"] / 2.0 - 1) <= 0.05
    for key in ("kl_mean", "kl_p99", "top1_agreement", "ppl_change", "greedy_agreement"):
        assert np.isfinite(result[key])
    assert main(["--model", tiny_model_path, "--text", text_path, "--bits", "3", "--n-context", "96",
                 "--n-eval", "32", "--n-greedy", "0"]) == 0
    assert '"kl_mean"' in capsys.readouterr().out


def test_compare_on_known_distributions():
    p = np.log(np.array([[0.5, 0.5, 0.0 + 1e-30], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]], np.float32))
    q = np.log(np.array([[0.25, 0.75, 1e-30], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]], np.float32))
    ref = {"logprobs": p, "greedy": np.array([1, 2, 3])}
    out = {"logprobs": q, "greedy": np.array([1, 2, 4])}
    r = compare(ref, out, [0, 1, 0])
    kl0 = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    assert r["n_eval"] == 2 and np.isclose(r["kl_mean"], kl0 / 2, atol=1e-6)
    assert r["top1_agreement"] == 0.5 and r["greedy_common_prefix"] == 2 and np.isclose(r["greedy_agreement"], 2 / 3)
