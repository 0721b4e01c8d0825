"""Inter-layer prediction of KV for the lossy codec (format 4): code only what earlier layers do not explain.

Every layer's keys and values are projections of the same slowly changing residual stream, so one layer's KV
is largely a linear function of the layer before: in the codec's coded domain (``profile``: keys whitened
by the query metric, then KLT; values KLT), each tensor is predicted from the *decoded* K and V of the
previous layer, and a layer's V also from its own decoded K (:data:`FEATURES`). The predictors are least-squares
(ridge) matrices fitted once per model on calibration text and kept in the model's KV profile (hashed into its
digest, so a payload names exactly the matrices it was coded with).

The loop is closed: the encoder predicts from what the decoder will have (the reconstructed earlier tensors:
``native/lossy3.c``'s ``lossy3_encode`` writes exactly the decoder's values as it codes), so quantization errors
do not accumulate across layers. Rows (cells) are independent, which lets the rate search run the loop on a
subsample of rows.

The previous layer alone carries most of the predictable energy (a second one adds little for its arithmetic),
and varied calibration text fits better predictors than one long text (figures: ``benchmarks/RESULTS.md``).

    >>> predictors = fit_predictors([bodies_of_text_1, bodies_of_text_2])
    ... # {"k1": [256, 48], "k1_out": [48, 128], "v1": [384, 128], ...}
    ... # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np

from ...detmath import matmul

RIDGE = 1e-2  # ridge penalty relative to the mean eigenvalue of the features' Gram matrix
# reduced-rank predictors (two factors, ``"k1"`` [n_features, rank] and ``"k1_out"`` [rank, n_channels]) where
# they keep the gain: the keys' at rank 48 (lower ranks cost KL at 1 bit per value); the values' lose too much
RANKS = {"k": 48}
OUT_SUFFIX = "_out"
PREDICTOR_TOKENS = 1000  # cells per calibration text
# calibration texts for the predictors (Debian base-files and fortunes; whichever exist): licences and prose,
# none of them an evaluation text of the benchmarks
PREDICTOR_TEXTS = ("/usr/share/common-licenses/GFDL-1.3", "/usr/share/common-licenses/LGPL-2.1",
                   "/usr/share/games/fortunes/art", "/usr/share/games/fortunes/science")

__all__ = ["FEATURES", "RANKS", "ClosedLoop", "coding_order", "coding_rank", "feature_keys", "features",
           "fit_predictors", "forget_unused", "predict", "predictor_key"]

FEATURES = "previous layer K and V; a layer's V also its own K"


def feature_keys(kind: str, layer: int) -> list[tuple[str, int]]:
    """The tensors ``(kind, layer)`` predicting tensor ``(kind, layer)``, in feature order."""
    keys = [("k", layer - 1), ("v", layer - 1)] if layer > 0 else []
    return keys + ([("k", layer)] if kind == "v" else [])


def coding_rank(kind: str, layer: int) -> tuple[int, bool]:
    """Sort key of tensor ``(kind, layer)`` in the coding order: by layer, K first (every tensor after its features)."""
    return layer, kind != "k"


def coding_order(keys) -> list[tuple[str, int]]:
    """``(kind, layer)`` keys in an order where every tensor comes after its features: by layer, K first."""
    return sorted(keys, key=lambda key: coding_rank(*key))


def predictor_key(kind: str, layer: int) -> str:
    return f"{kind}{layer}"


def features(bodies: dict, kind: str, layer: int) -> np.ndarray | None:
    """The feature matrix ``[n_rows, n_features]`` of tensor ``(kind, layer)`` from ``bodies``
    (``(kind, layer)`` -> coded-domain rows), or None when it has no features or one is missing."""
    keys = feature_keys(kind, layer)
    if not keys or any(key not in bodies for key in keys):
        return None
    parts = [bodies[key] for key in keys]
    if len({len(p) for p in parts}) != 1:
        return None
    return np.ascontiguousarray(np.hstack(parts), dtype=np.float32)


def forget_unused(bodies: dict, layer: int) -> None:
    """Drop from ``bodies`` what no tensor after layer ``layer`` uses as a feature (layers before ``layer - 1``)."""
    for key in [key for key in bodies if key[1] < layer - 1]:
        del bodies[key]


def predict(bodies: dict, kind: str, layer: int, w: np.ndarray, w_out: np.ndarray | None = None,
            split: bool = True) -> np.ndarray:
    """``features(bodies, kind, layer) @ w`` (``@ w_out`` for a reduced-rank predictor) without assembling the
    features: each output summed over the feature tensors' channels in feature order (``detmath.matmul``: the
    encoder and every decoder compute the same bits). ``split`` False: the products in the calling thread."""
    out, start = None, 0
    for key in feature_keys(kind, layer):
        x = bodies[key]
        part = w[start:start + x.shape[1]]
        out = matmul(x, part, split=split) if out is None else matmul(x, part, out=out, accumulate=True, split=split)
        start += x.shape[1]
    return out if w_out is None else matmul(out, w_out, split=split)


def fit_predictors(samples: list[dict], ridge: float = RIDGE, ranks: dict | None = None) -> dict[str, np.ndarray]:
    """Ridge least-squares predictors ``{"k1": W [n_features, n_channels], ...}`` from calibration bodies
    (one dict ``(kind, layer)`` -> coded-domain rows per text); tensors without features get none. A kind with
    a rank in ``ranks`` (default :data:`RANKS`) below its matrices' gets the reduced-rank predictor: ``W`` projected
    on the leading right singular vectors of the fitted values ``X W`` (``V``), kept as ``"k1"`` = ``W V`` and
    ``"k1_out"`` = ``Vᵀ``."""
    ranks = RANKS if ranks is None else ranks
    out = {}
    keys = set().union(*(s.keys() for s in samples)) if samples else set()
    for kind, layer in coding_order(keys):
        pairs = [(features(s, kind, layer), s.get((kind, layer))) for s in samples]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None and len(x) == len(y) and len(y)]
        if not pairs:
            continue
        x = np.vstack([p[0] for p in pairs]).astype(np.float64)
        y = np.vstack([p[1] for p in pairs]).astype(np.float64)
        gram = x.T @ x
        gram[np.diag_indices_from(gram)] += ridge * max(np.trace(gram) / len(gram), 1e-30)
        w, key, rank = np.linalg.solve(gram, x.T @ y), predictor_key(kind, layer), ranks.get(kind)
        if rank is not None and rank < min(w.shape):
            basis = np.linalg.svd(x @ w, full_matrices=False)[2][:rank].T  # [n_channels, rank]
            w, out[key + OUT_SUFFIX] = w @ basis, basis.T.astype(np.float32)
        out[key] = w.astype(np.float32)
    return out


class ClosedLoop:
    """The tensors of one stream (``tensor._Prepared``, coded-domain ``body`` rows) and the profile's
    predictors that apply to them; :meth:`residuals` runs the encoder's side of the loop at one step scale."""

    def __init__(self, prepared: list, profile):
        self.prepared = {(p.kind, p.layer): p for p in prepared}
        self.order = coding_order(self.prepared)
        self.matrix = {}
        for kind, layer in self.order:
            p, keys = self.prepared[kind, layer], feature_keys(kind, layer)
            if p.digest is None or not keys or any(
                    key not in self.prepared or self.prepared[key].digest is None
                    or len(self.prepared[key].body) != len(p.body) for key in keys):
                continue
            n_features = sum(self.prepared[key].n_channels for key in keys)
            w = profile.predictor(kind, layer, n_features, p.n_channels)
            if w is not None:
                self.matrix[kind, layer] = w  # (w, w_out or None)
        self._samples = {}  # row_every -> (rows, {key: body rows}): the search asks for the same rows each step

    def _rows(self, row_every: int):
        """(row indices or None, ``(kind, layer)`` -> the body rows the loop runs on)."""
        if row_every <= 1:
            return None, {key: p.body for key, p in self.prepared.items()}
        if row_every not in self._samples:
            rows = next(iter(self.prepared.values())).sample_rows(row_every)
            self._samples[row_every] = rows, {key: p.body[rows] for key, p in self.prepared.items()}
        return self._samples[row_every]

    def run(self, code, weights: dict | None, row_every: int = 1) -> None:
        """Run the encoder's side of the loop: for each tensor in coding order, ``code(prepared, residual)``
        (``residual`` None for a tensor nothing predicts) codes it and returns ``(scale, rows)``: the scale it
        used and what the decoder gets back for what was coded, or None to have it reconstructed here; plus the
        prediction, that feeds the later predictions. With ``row_every > 1`` only the rows ``estimate_bits``
        reads are run (``residual`` holds just those rows)."""
        rows, bodies = self._rows(row_every)
        decoded = {}
        for kind, layer in self.order:
            p, body = self.prepared[kind, layer], bodies[kind, layer]
            w = self.matrix.get((kind, layer))
            prediction = predict(decoded, kind, layer, *w) if w is not None else None
            residual = body if prediction is None else body - prediction
            scale, rec = code(p, None if prediction is None else residual)
            decoded[kind, layer] = rec if rec is not None else p.reconstruct(residual, scale, weights, rows)
            if prediction is not None:
                decoded[kind, layer] += prediction
            forget_unused(decoded, layer)

    def residuals(self, scale: float, weights: dict | None, row_every: int = 1) -> dict:
        """``_Prepared`` -> residual rows of each predicted tensor at ``scale``; with ``row_every > 1`` only
        those of the rows ``estimate_bits`` reads (``sample_rows(row_every)``)."""
        out = {}

        def keep(p, residual):
            if residual is not None:
                out[p] = residual
            return scale, None

        self.run(keep, weights, row_every)
        return out
