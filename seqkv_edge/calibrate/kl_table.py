"""Measuring a model's rate-quality table for the lossy tier (``codecs.kv_lossy.kl_table.KLTable``): the state of
``N_CONTEXT`` tokens of each calibration text coded at each of ``SCALES`` (with the model's profile and step
weights), restored, and the next-token KL over ``N_EVAL`` teacher-forced tokens measured against the exact cache
(``calibrate.quality``). Done once per model, profile and step weights, on first use (about 13 s a text on
a 2-core machine for a 0.5B model), cached beside the profile.

The texts are licences (Debian's, or the package's copies): plain English the quality figures are never measured
on. Other texts cost more or less KL at the same step; the table's ``EXCESS_MARGIN`` leaves room for that.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from ..codecs.kv_lossy.kl_table import KLTable, load_kl_table, save_kl_table

logger = logging.getLogger(__name__)

TEXTS = ("/usr/share/common-licenses/Apache-2.0", "/usr/share/common-licenses/GFDL-1.3")
SCALES = (0.07, 0.14, 0.28, 0.56)  # ~1 to ~4 bits per value on the known models
N_CONTEXT, N_EVAL = 1000, 128
EXTEND = 2  # at most this many scales added beyond SCALES

__all__ = ["N_CONTEXT", "N_EVAL", "SCALES", "TEXTS", "load_or_measure_kl_table", "measure_kl_table"]


def measure_kl_table(model_path, profile, texts=TEXTS, scales=SCALES, n_context: int = N_CONTEXT,
                     n_eval: int = N_EVAL) -> KLTable:
    """The table of ``profile`` (with its ``step_weights``) measured on ``texts``: KL and bits averaged over them, at
    ``scales`` and then at halved (doubled) scales while the lowest (highest) KL is not clear of ``POOR_KL``, so that
    the default target lies between measured points on every model."""
    from ..codecs.kv_lossy.codec import POOR_KL, KVLossyCodec
    from ..textdata import text_path
    from .quality import QualityBench

    from tqdm import tqdm

    t0 = time.perf_counter()
    # on a terminal, a bar: first use of the lossy tier waits on this (tens of seconds)
    bar = tqdm(total=len(texts) * (1 + len(scales)), desc="lossy KL table", unit="step", disable=None, leave=False)
    benches = []
    for t in texts:
        benches.append(QualityBench(model_path, text_path(t), n_context=n_context, n_eval=n_eval, n_greedy=0))
        bar.update(1)
    n_values = [sum(t.n_cells * t.n_channels for t in b.state.tensors()) for b in benches]

    def point(scale: float) -> tuple[float, float, float]:
        kl, bits = [], []
        for bench, n in zip(benches, n_values):
            blob, coded = bench.lossy_blob(KVLossyCodec(scale=scale), profile=profile)
            kl.append(max(bench.evaluate(blob)["kl_mean"], 1e-6))
            bits.append(8 * coded / n)
            bar.update(1)
        return scale, float(np.mean(kl)), float(np.mean(bits))

    points = [point(s) for s in scales]
    for _ in range(EXTEND):  # what the table expects (its margin counted) must straddle the default target
        expected = KLTable(points)
        bar.total += len(texts)
        if expected.kl_at(min(points)[0]) > POOR_KL / 2:
            points.append(point(min(points)[0] / 2))
        elif expected.kl_at(max(points)[0]) < 2 * POOR_KL:
            points.append(point(max(points)[0] * 2))
        else:
            bar.total -= len(texts)
            break
    bar.close()
    del benches
    meta = {"texts": [text_path(t).name for t in texts], "n_context": n_context, "n_eval": n_eval,
            "seconds": round(time.perf_counter() - t0, 1)}
    return KLTable(points, meta)


def load_or_measure_kl_table(model_path, profile) -> KLTable | None:
    """The model's cached table for ``profile`` as it is, measured now if there is none; None (with a warning) when
    the model cannot be measured on the calibration texts (too short a context, say)."""
    from ..fingerprint import model_fingerprint

    fingerprint = model_fingerprint(str(model_path))
    table = load_kl_table(fingerprint, profile)
    if table is not None:
        return table
    logger.info("measuring the lossy KL table of %s (%d texts x %d step sizes)", model_path, len(TEXTS), len(SCALES))
    try:
        table = measure_kl_table(model_path, profile)
    except (ValueError, RuntimeError) as exc:
        logger.warning("no lossy KL table for %s (%s): max_kl uses the default model's table", model_path, exc)
        return None
    save_kl_table(fingerprint, table, profile)
    logger.info("lossy KL table of %s: %s (%.1f s)", model_path,
                ", ".join(f"scale {s:g}: KL {kl:.4f} at {b:.2f} bits" for s, kl, b in table.points),
                table.meta["seconds"])
    return table
