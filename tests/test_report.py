"""``seqkv bench --report DIR`` on the tiny model with small contexts: the files and the tables are there."""
from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("matplotlib")

from seqkv_edge.bench.report import add_report_args, report_main  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_writes_markdown_json_and_plots(tmp_path, tiny_model_path, monkeypatch):
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path / "home"))  # the lossy tier builds its KV profile there
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--text")
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    add_report_args(parser)
    out = tmp_path / "report"
    args = parser.parse_args(["--model", tiny_model_path, "--report", str(out), "--report-lengths", "24,48"])
    assert report_main(args) == 0

    for name in ("bytes_per_token.png", "restore_seconds.png", "bits_per_token.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    markdown = (out / "report.md").read_text()
    for heading in ("## Bytes per token", "## Restore seconds by context length",
                    "## Bits per token against the model's cross-entropy"):
        assert heading in markdown
    for row in ("llama.cpp raw state, f16", "zstd-3 of the f16 state", "llama.cpp raw state, q8_0",
                "llama.cpp raw state, q4_0", "seqkv KV snapshot, lossless (f16)", "seqkv tokens, portable",
                "seqkv tokens, hybrid", "seqkv tokens, model-coded", "model cross-entropy (ideal)",
                "seqkv KV snapshot, lossy (2 bits/value, model profile)"):
        assert f"| {row} |" in markdown, row
    assert "| 24 |" in markdown and "| 48 |" in markdown
    for fact in ("**model**: seqkv-tiny", "**text**:", "**machine**:", "llama-cpp-python 0.3.36"):
        assert fact in markdown, fact
    for image in ("bytes_per_token.png", "restore_seconds.png", "bits_per_token.png"):
        assert f"]({image})" in markdown

    figures = json.loads((out / "report.json").read_text())
    assert [row["tokens"] for row in figures["rows"]] == [24, 48]
    assert all(row["snapshot_bytes"] < row["raw_state_bytes"] for row in figures["rows"])
    assert all(row["lossy_bytes"] < row["snapshot_bytes"] and row["restore_s"]["lossy"] > 0 for row in figures["rows"])
    assert "| lossy snapshot s |" in markdown
    assert {c["cache_type"] for c in figures["cache_types"]} == {"q8_0", "q4_0"}
