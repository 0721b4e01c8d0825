"""``seqkv bench --tiers lossy`` on the tiny model: every method scored on the same session, the curve written."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from seqkv_edge.bench.turboquant_peer import NORM_BITS, turboquant_vectors
from seqkv_edge.cli import main
from seqkv_edge.codecs.kv_lossy.codec import FORMAT_VERSION

TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 4


def test_bench_lossy_tier_scores_every_method_and_writes_the_curve(tiny_model_path, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    report = tmp_path / "bench.json"
    assert main(["bench", "--model", tiny_model_path, "--text", str(text), "--tiers", "lossy", "--lossy-bits", "1,3",
                 "--lossy-context", "96", "--lossy-eval", "32", "--lossy-greedy", "4", "--curve-dir", str(tmp_path),
                 "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "KL mean" in out and "TurboQuant peer 2" in out and "llama.cpp q8_0" in out
    rows = {row["method"]: row for row in json.loads((tmp_path / "lossy_rate_quality.json").read_text())}
    assert rows["lossless f16"]["kl_mean"] == 0.0 and rows["lossless f16"]["top1_agreement"] == 1.0
    coarse, fine = rows[f"seqkv kv_lossy v{FORMAT_VERSION} 1"], rows[f"seqkv kv_lossy v{FORMAT_VERSION} 3"]
    assert abs(coarse["bits_per_value"] - 1) <= 0.05 and abs(fine["bits_per_value"] - 3) <= 0.15
    assert coarse["kl_mean"] > fine["kl_mean"] > 0.0
    for bits in (1, 1.5, 2, 2.5, 3, 4):
        row = rows[f"TurboQuant peer {bits:g}"]
        assert row["bits_per_value"] > bits and np.isfinite(row["kl_mean"])  # norms are counted on top
    assert {"llama.cpp q8_0", "llama.cpp q4_0"} <= set(rows)
    with open(tmp_path / "lossy_rate_quality.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert [r["method"] for r in json.loads(report.read_text())["lossy"]] == list(rows)


@pytest.mark.parametrize("bits", [2, 2.5])
def test_turboquant_peer_counts_its_norms(bits):
    x = np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32)  # 10 cells, 2 heads of 32
    y, stored = turboquant_vectors(x, 32, bits)
    n_vectors = 20 * (1 if bits == int(bits) else 2)  # fractional rates: two halves, each with its norm
    assert y.shape == x.shape and stored == x.size * bits + n_vectors * NORM_BITS
    assert np.mean((y - x) ** 2) < np.mean(x ** 2)  # a reconstruction, not noise
