"""The model-derived KV profile the lossy codec reads: per-head analysis / synthesis bases and inter-layer
predictors, named by an 8-byte digest of their bits. Payloads carry the digest; a decoder looks the profile up by
digest (``profile_for_digest``) and refuses (``ModelMismatchError``) when it does not hold the same bits. How a
profile is built from a model is ``seqkv_edge.calibrate.profile``.
"""
from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path

import numpy as np

from ...errors import CorruptDataError, ModelMismatchError
from ...fileio import atomic_write
from .predict import OUT_SUFFIX

DIGEST_BYTES = 8
PROFILE_VERSION = 3

__all__ = ["DIGEST_BYTES", "PROFILE_VERSION", "KVProfile", "load_profile_file", "parse_digest", "profile_dir",
           "profile_for_digest"]


class KVProfile:
    """Per-tensor analysis / synthesis matrices ``[n_heads, head_dim, head_dim]`` keyed ``"k0"``, ``"v0"``, ...
    (components ``y = x @ analysis[h]``, values ``x = y @ synthesis[h]``; for a KLT the columns of ``analysis``
    are the eigenvectors, largest variance first, and ``synthesis`` is its transpose) and the component
    variances measured on the calibration text; version 2: ``predictors`` (``predict``: ``"k1"`` ->
    ``[n_features, n_channels]``); version 3: reduced-rank ones where ``meta["predictor_ranks"]`` says (``"k1"``
    ``[n_features, rank]`` and ``"k1_out"`` ``[rank, n_channels]``). ``digest`` (8 bytes) hashes the matrices."""

    def __init__(self, analysis: dict, variances: dict, meta: dict | None = None, synthesis: dict | None = None,
                 predictors: dict | None = None):
        self.analysis = {key: np.ascontiguousarray(b, dtype=np.float32) for key, b in analysis.items()}
        if synthesis is None:
            synthesis = {key: b.transpose(0, 2, 1) for key, b in self.analysis.items()}
        self.synthesis = {key: np.ascontiguousarray(b, dtype=np.float32) for key, b in synthesis.items()}
        self.variances = {key: np.asarray(v, dtype=np.float32) for key, v in variances.items()}
        self.predictors = {key: np.ascontiguousarray(w, dtype=np.float32) for key, w in (predictors or {}).items()}
        self.meta = dict(meta or {})
        self.digest = _digest(self.analysis, self.synthesis, self.predictors)
        self.step_weights: dict | None = None  # the encoder's per-head step weights (calibrate.weights), not hashed
        self.kl_table = None  # the encoder's rate-quality table with these weights (kl_table.KLTable), not hashed

    def matrices(self, kind: str, layer: int, n_heads: int, head_dim: int):
        """``(analysis, synthesis)`` of one tensor, or None when the profile has none of that shape."""
        a, s = self.analysis.get(f"{kind}{layer}"), self.synthesis.get(f"{kind}{layer}")
        shape = (n_heads, head_dim, head_dim)
        return (a, s) if a is not None and s is not None and a.shape == shape == s.shape else None

    @property
    def version(self) -> int:
        return 1 if not self.predictors else 3 if "predictor_ranks" in self.meta else 2

    def predictor(self, kind: str, layer: int, n_features: int, n_channels: int) -> tuple | None:
        """The inter-layer predictor of one tensor, ``(w, w_out)`` (``w_out`` None unless reduced-rank; see
        ``predict.predict``), or None when the profile has none of that shape."""
        w, w_out = self.predictors.get(f"{kind}{layer}"), self.predictors.get(f"{kind}{layer}{OUT_SUFFIX}")
        if w is None or w.shape[0] != n_features:
            return None
        if w_out is None:
            return (w, None) if w.shape[1] == n_channels else None
        return (w, w_out) if w_out.shape == (w.shape[1], n_channels) else None

    def save(self, path) -> None:
        arrays = {f"analysis_{k}": b for k, b in self.analysis.items()}
        arrays.update({f"synthesis_{k}": b for k, b in self.synthesis.items()})
        arrays.update({f"var_{k}": v for k, v in self.variances.items()})
        arrays.update({f"pred_{k}": w for k, w in self.predictors.items()})
        meta = dict(self.meta, profile_version=self.version, digest=self.digest.hex())
        buf = io.BytesIO()
        np.savez(buf, meta=json.dumps(meta, sort_keys=True), **arrays)
        atomic_write(path, buf.getvalue())

    @classmethod
    def load(cls, path) -> KVProfile:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            analysis = {n[9:]: z[n] for n in z.files if n.startswith("analysis_")}
            synthesis = {n[10:]: z[n] for n in z.files if n.startswith("synthesis_")}
            variances = {n[4:]: z[n] for n in z.files if n.startswith("var_")}
            predictors = {n[5:]: z[n] for n in z.files if n.startswith("pred_")}
        profile = cls(analysis, variances, meta, synthesis, predictors)
        if profile.digest.hex() != meta.get("digest"):
            raise CorruptDataError(f"loading the KV profile {path}: its bases hash to {profile.digest.hex()}, "
                                   f"its header says {meta.get('digest')}; delete the file to rebuild it")
        return profile


def _digest(analysis: dict, synthesis: dict, predictors: dict) -> bytes:
    h = hashlib.sha256(b"seqkv kv_profile v1")
    for key in sorted(analysis):
        for b in (analysis[key], synthesis.get(key, np.zeros(0, np.float32))):
            h.update(key.encode() + repr(b.shape).encode() + b.astype("<f4").tobytes())
    if predictors:  # version 2; a version 1 profile keeps its digest
        h.update(b"predictors")
        for key in sorted(predictors):
            h.update(key.encode() + repr(predictors[key].shape).encode() + predictors[key].astype("<f4").tobytes())
    return h.digest()[:DIGEST_BYTES]


def parse_digest(text) -> bytes | None:
    """The profile digest a text names (its hex form, as files and META carry it), or None when it names none."""
    ok = isinstance(text, str) and len(text) == 2 * DIGEST_BYTES and all(c in "0123456789abcdef" for c in text)
    return bytes.fromhex(text) if ok else None


def profile_dir() -> Path:
    from ...models import seqkv_home

    return seqkv_home() / "kv_profiles"


_LOADED: dict = {}  # (profile file, digest, mtime, size) -> KVProfile: checked on load, reloaded when the file changes
_LOADED_MAX = 4
_LOADED_LOCK = threading.Lock()


def load_profile_file(path, digest: bytes) -> KVProfile:
    """The profile in ``path``, which must be the one ``digest`` names (``CorruptDataError`` otherwise); loaded once
    per process while the file stays as it is (restores read the same profile every time: ~30 ms a load)."""
    path = Path(path)
    stat = path.stat()
    key = (path.resolve(), digest, stat.st_mtime_ns, stat.st_size)
    with _LOADED_LOCK:
        loaded = _LOADED.get(key)
    if loaded is not None:
        return loaded
    loaded = KVProfile.load(path)
    if loaded.digest != digest:
        raise CorruptDataError(f"{path} holds KV profile {loaded.digest.hex()}, not {digest.hex()}")
    with _LOADED_LOCK:
        while len(_LOADED) >= _LOADED_MAX:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = loaded
    return loaded


def profile_for_digest(digest: bytes, given: KVProfile | None = None) -> KVProfile:
    """The profile whose digest is ``digest``: ``given`` if it matches, else the cached one of that digest
    (loaded once per process: a state's tensors all name the same one)."""
    if given is not None and given.digest == digest:
        return given
    path = profile_dir() / f"{digest.hex()}.npz"
    if not path.is_file():
        have = f"the profile given has digest {given.digest.hex()}" if given is not None else "none was given"
        raise ModelMismatchError(f"decoding lossy KV: the payload was coded with KV profile {digest.hex()}; {have} "
                                 f"and {path} does not exist. Build it with load_or_build_profile(llm) on the "
                                 "same model, or copy the encoder's file")
    return load_profile_file(path, digest)
