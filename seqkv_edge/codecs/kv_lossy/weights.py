"""The lossy tier's per-head step weights of a model (``{"k": [per layer: [per head]], "v": [...]}``): where they
are read from (measured here by ``seqkv calibrate``, else shipped with the package under ``data/kv_weights/``) and
how they are checked. Measuring them is ``seqkv_edge.calibrate.weights``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import CorruptDataError
from ...fileio import atomic_write
from .profile import profile_dir

WEIGHTS_VERSION = 1

__all__ = ["WEIGHTS_VERSION", "load_weights", "save_weights", "valid_weights", "weights_path"]


def valid_weights(weights) -> bool:
    """Step weights are ``{"k": [...], "v": [...]}`` (either may be missing), one entry per layer: a positive
    number, or a list of one positive number per head."""
    try:
        return isinstance(weights, dict) and set(weights) <= {"k", "v"} and all(
            np.all(np.asarray(w, dtype=np.float64) > 0) and np.ndim(w) <= 1 for ws in weights.values() for w in ws)
    except (TypeError, ValueError):
        return False


def weights_path(fingerprint: str) -> Path:
    return profile_dir() / f"{fingerprint}.weights.json"


def _shipped_path(fingerprint: str) -> Path:
    return Path(__file__).parents[2] / "data" / "kv_weights" / f"{fingerprint}.json"


def save_weights(fingerprint: str, weights: dict, meta: dict | None = None, path=None) -> Path:
    """Write the weights of a model (atomically) where ``load_weights`` finds them first."""
    path = Path(path) if path else weights_path(fingerprint)
    doc = dict(meta or {}, version=WEIGHTS_VERSION, model_fingerprint=fingerprint, weights=weights)
    atomic_write(path, json.dumps(doc, indent=1).encode())
    return path


def load_weights(fingerprint: str) -> dict | None:
    """The model's step weights: measured here (``seqkv calibrate``) if present, else shipped, else None."""
    for path in (weights_path(fingerprint), _shipped_path(fingerprint)):
        if path.is_file():
            try:
                doc = json.loads(path.read_text())
                weights = doc["weights"]
                ok = (doc.get("version") == WEIGHTS_VERSION and doc.get("model_fingerprint") == fingerprint
                      and set(weights) == {"k", "v"} and valid_weights(weights))
            except (ValueError, KeyError, TypeError) as exc:
                raise CorruptDataError(f"reading the KV step weights {path}: {exc}; delete the file or run "
                                       "seqkv calibrate again") from exc
            if not ok:
                raise CorruptDataError(f"reading the KV step weights {path}: not version {WEIGHTS_VERSION} weights "
                                       f"of model {fingerprint}; delete the file or run seqkv calibrate again")
            return weights
    return None
