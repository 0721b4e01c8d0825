"""A model's rate-quality table for the lossy tier: the mean next-token KL, and the bits per value, measured at a
few step scales with the model's KV profile and step weights. ``max_kl`` maps to a step scale through it, and a
``bits`` target is checked against it. Measuring it (on first use, seconds) is ``seqkv_edge.calibrate.kl_table``.

A table holds for one profile, one set of step weights and one format: ``load_kl_table`` returns it only when all
three match (a ``seqkv calibrate`` that writes new weights measures it again).

    >>> t = KLTable([(0.1, 0.005, 3.0), (0.2, 0.012, 2.2), (0.4, 0.04, 1.5)], margin=1.0)
    >>> round(t.scale_for(0.012), 3), round(t.kl_at(0.2), 3), round(t.bits_for(0.012), 2)
    (0.2, 0.012, 2.2)
    >>> round(KLTable(t.points).kl_at(0.2), 3)  # the floor 0.005 plus twice the excess measured: 0.005 + 2 * 0.007
    0.019
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from ...errors import CorruptDataError
from ...fileio import atomic_write
from .profile import profile_dir

KL_TABLE_VERSION = 1
# The KL a model shows at a step scale is its floor (what any change to the cache costs it: the same on every text)
# plus an excess that varies with the text: over the three known models and six texts, up to ~1.8x the excess the
# calibration texts show. The table expects floor + excess / EXCESS_MARGIN, so a max_kl target holds on most texts.
EXCESS_MARGIN = 0.5
_SLOPES = (0.5, 3.0)  # log KL per log scale beyond the measured points: the measured end slope, held in this range

__all__ = ["KL_TABLE_VERSION", "KLTable", "kl_table_key", "kl_table_path", "load_kl_table", "save_kl_table"]


class KLTable:
    """``points``: (step scale, mean KL in nats per token, bits per value) as measured, any order. KL is made
    non-decreasing in the scale (a measured dip is noise); the table expects ``floor + excess / margin`` (the
    lowest KL measured is the floor) and interpolates that log-log; beyond the points, the end slopes."""

    def __init__(self, points, meta: dict | None = None, margin: float = EXCESS_MARGIN):
        rows = sorted((float(s), float(kl), float(b)) for s, kl, b in points)
        if len(rows) < 2 or any(not (s > 0 and kl > 0 and b > 0) for s, kl, b in rows):
            raise ValueError(f"a KL table needs two or more points of positive scale, KL and bits: {rows}")
        if not 0 < margin <= 1:
            raise ValueError(f"KLTable(margin={margin}): choose 0 < margin <= 1")
        self.points, self.margin = rows, margin
        self.meta = dict(meta or {})
        self._log_s = np.log([s for s, _, _ in rows])
        measured = np.maximum.accumulate([kl for _, kl, _ in rows])
        self._log_kl = np.log(measured[0] + (measured - measured[0]) / margin)
        self._bits = np.array([b for _, _, b in rows])
        self._slopes = tuple(min(max((self._log_kl[j] - self._log_kl[i]) / (self._log_s[j] - self._log_s[i]),
                                     _SLOPES[0]), _SLOPES[1]) for i, j in ((0, 1), (-2, -1)))

    @property
    def floor(self) -> float:
        """The lowest KL measured: below it the model's own floor (any change to the cache costs about this) rules."""
        return float(math.exp(self._log_kl[0]))

    def scale_for(self, max_kl: float) -> float:
        """The step scale whose KL is ``max_kl``."""
        x, ks, ss = math.log(max_kl), self._log_kl, self._log_s
        if x < ks[0]:
            return math.exp(ss[0] + (x - ks[0]) / self._slopes[0])
        if x > ks[-1]:
            return math.exp(ss[-1] + (x - ks[-1]) / self._slopes[1])
        # ties (a flat stretch) resolve to the largest scale of that KL
        i = int(np.searchsorted(ks, x, side="right")) - 1
        if i >= len(ks) - 1:
            return math.exp(ss[-1])
        t = (x - ks[i]) / (ks[i + 1] - ks[i]) if ks[i + 1] > ks[i] else 1.0
        return math.exp(ss[i] + t * (ss[i + 1] - ss[i]))

    def kl_at(self, scale: float) -> float:
        """The KL expected at step scale ``scale``."""
        x, ks, ss = math.log(scale), self._log_kl, self._log_s
        if x < ss[0]:
            return math.exp(ks[0] + (x - ss[0]) * self._slopes[0])
        if x > ss[-1]:
            return math.exp(ks[-1] + (x - ss[-1]) * self._slopes[1])
        return math.exp(float(np.interp(x, ss, ks)))

    def scale_for_bits(self, bits: float) -> float:
        """About the step scale that codes at ``bits`` per value (interpolated in log scale; ends extrapolated)."""
        b, ls = self._bits[::-1], self._log_s[::-1]  # rising bits
        if bits <= b[0] or bits >= b[-1]:
            end = 0 if bits <= b[0] else -1
            slope = (ls[-1] - ls[0]) / (b[-1] - b[0])
            return math.exp(ls[end] + slope * (bits - b[end]))
        return math.exp(float(np.interp(bits, b, ls)))

    def bits_for(self, max_kl: float) -> float:
        """About how many bits per value ``max_kl`` takes (the rate falls ~1 bit per doubling of the step)."""
        x = math.log(self.scale_for(max_kl))
        slope = (self._bits[-1] - self._bits[0]) / (self._log_s[-1] - self._log_s[0])
        if self._log_s[0] <= x <= self._log_s[-1]:
            return float(np.interp(x, self._log_s, self._bits))
        end = 0 if x < self._log_s[0] else -1
        return float(max(self._bits[end] + slope * (x - self._log_s[end]), 0.0))


def kl_table_key(profile) -> dict:
    """What a table holds for: the profile's digest, its step weights (hashed) and the lossy format."""
    from .tensor import FORMAT_VERSION

    weights = getattr(profile, "step_weights", None)
    weights_hash = (None if weights is None
                    else hashlib.sha256(json.dumps(weights, sort_keys=True).encode()).hexdigest()[:16])
    return {"profile": profile.digest.hex(), "weights": weights_hash, "format": FORMAT_VERSION}


def kl_table_path(fingerprint: str) -> Path:
    return profile_dir() / f"{fingerprint}.kl.json"


def save_kl_table(fingerprint: str, table: KLTable, profile) -> Path:
    doc = dict(table.meta, version=KL_TABLE_VERSION, model_fingerprint=fingerprint, key=kl_table_key(profile),
               points=table.points)
    path = kl_table_path(fingerprint)
    atomic_write(path, json.dumps(doc, indent=1).encode())
    return path


def load_kl_table(fingerprint: str, profile) -> KLTable | None:
    """The model's table if one was measured for ``profile`` as it is now (profile, step weights, format); else None."""
    path = kl_table_path(fingerprint)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        if doc.get("version") != KL_TABLE_VERSION or doc.get("key") != kl_table_key(profile):
            return None
        return KLTable(doc["points"], {k: v for k, v in doc.items() if k not in ("points", "key", "version")})
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptDataError(f"reading the lossy KL table {path}: {exc}; delete the file (it is measured again "
                               "on first use)") from exc
