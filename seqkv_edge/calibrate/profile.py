"""Model-derived KV profiles: per-head decorrelating bases (KLT) for the lossy KV codec, computed once per model.

A key or value head's 64 channels are strongly correlated (pre-RoPE keys are ``W_k x + b``: their covariance
is ``W_k Σx W_kᵀ``, a property of the model much more than of the text). Rotated onto the eigenvectors of
that covariance, the energy sits in a few components; a uniform quantizer with per-component entropy coding
then spends bits on those only (reverse water-filling: a component below the quantizer's step costs ~0 bits).

Keys are coded for what they are used for: query-key scores. The calibration prefill also captures the
queries (llama.cpp's graph callback), and each key head is first whitened by the query metric
``M = E_Δ[R(Δ)ᵀ E[q qᵀ] R(Δ)]`` (the queries of the head's GQA group, averaged over relative RoPE
rotations R(Δ)), so that squared error in the coded domain is squared error in attention scores; the KLT is
then taken in that domain (analysis ``W P``, synthesis its inverse): lower KL than a plain KLT at the same rate.
Values use the plain KLT (an ``W_o``-weighted metric gained nothing).

Profile version 2 adds the inter-layer predictors of format 4 (``seqkv_edge.codecs.kv_lossy.predict``), fitted on a
few more calibration texts; they are hashed into the digest (version 1 digests are unchanged, so old payloads
still find their profile). Version 3: the keys' predictors are reduced-rank (``predict.RANKS``: two factors,
about half the products); a cached version 1 or 2 profile (or one of other ranks) is rebuilt, its file kept.

Storing a basis in every session would cost more than it saves, so the basis is derived from the *model*:
one short calibration prefill, eigenvectors of each head's covariance, cached in
``$SEQKV_HOME/kv_profiles`` under the model fingerprint. Payloads carry the profile's digest; a decoder looks
the profile up by digest and refuses (``ModelMismatchError``) when it does not hold the same bits.

    >>> profile = load_or_build_profile(llm)                     # doctest: +SKIP
    >>> KVLossyCodec(bits=2.0).encode_state(state, rope, profile=profile)   # doctest: +SKIP
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np

from ..codecs.kv_lossy.predict import (
    FEATURES,
    PREDICTOR_TEXTS,
    PREDICTOR_TOKENS,
    RANKS,
    fit_predictors,
)
from ..codecs.kv_lossy.profile import PROFILE_VERSION, KVProfile, load_profile_file, parse_digest, profile_dir

logger = logging.getLogger(__name__)

CALIBRATION_TOKENS = 768
# calibration text: a licence other than the GPL-3 the benchmarks measure on (Debian base-files, else the package's
# copy: textdata.text_path)
CALIBRATION_TEXTS = ("/usr/share/common-licenses/Apache-2.0", "/usr/share/common-licenses/GPL-3")
METRIC_FLOOR = 0.1  # query-metric eigenvalues floored at this share of their mean (directions no query sees)
METRIC_MAX_DISTANCE, METRIC_N_DISTANCES = 1024, 129  # relative positions Δ averaged over, uniform in [-1024, 0]

__all__ = ["build_profile", "coded_bodies", "load_or_build_profile", "profile_from_state", "with_predictors"]


def head_bases(x: np.ndarray, n_heads: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors (sign-normalised, largest variance first) and eigenvalues of each head's covariance of
    ``x`` ``[n_cells, n_heads * head_dim]``."""
    x = x.astype(np.float64)
    x = x - x.mean(axis=0)
    heads = x.reshape(len(x), n_heads, -1)
    bases, variances = [], []
    for h in range(n_heads):
        cov = heads[:, h].T @ heads[:, h] / max(len(x), 1)
        w, u = np.linalg.eigh(cov)
        w, u = w[::-1], u[:, ::-1]
        u = u * np.where(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])] < 0, -1.0, 1.0)
        bases.append(u)
        variances.append(np.maximum(w, 0.0))
    return np.stack(bases).astype(np.float32), np.stack(variances).astype(np.float32)


def query_metric(queries: np.ndarray, rope: dict, n_head_kv: int) -> np.ndarray:
    """Per KV head ``[n_head_kv, head_dim, head_dim]``: E over the group's query heads and relative rotations
    Δ of ``R(Δ)ᵀ q qᵀ R(Δ)`` for pre-RoPE queries ``[n_tokens, n_head * head_dim]``."""
    from ..state.rope import apply_rope, rope_supported

    head_dim = rope["head_dim_k"]
    q = queries.astype(np.float64).reshape(len(queries), -1, head_dim)
    group = q.shape[1] // n_head_kv
    second = np.einsum("thi,thj->hij", q, q) / max(len(q), 1)
    metric = np.stack([second[g * group:(g + 1) * group].sum(axis=0) for g in range(n_head_kv)])
    if not rope_supported(rope):
        return metric
    eye = np.eye(head_dim, dtype=np.float32)
    rotations = [apply_rope(eye, np.full(head_dim, d, np.int32), dict(rope, head_dim_k=head_dim)).astype(np.float64)
                 for d in np.linspace(-METRIC_MAX_DISTANCE, 0, METRIC_N_DISTANCES).round()]
    return np.stack([sum(x @ m @ x.T for x in rotations) / len(rotations) for m in metric])  # x = R(Δ)ᵀ


def metric_bases(x: np.ndarray, metric: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Analysis ``W P`` (whiten by ``metric``, then KLT of ``x`` there), its inverse, and the variances."""
    x = x.astype(np.float64)
    x = x - x.mean(axis=0)
    n_heads = metric.shape[0]
    heads = x.reshape(len(x), n_heads, -1)
    analysis, synthesis, variances = [], [], []
    for h in range(n_heads):
        w, u = np.linalg.eigh(metric[h])
        whiten = u * np.sqrt(np.maximum(w, METRIC_FLOOR * max(w.mean(), 1e-30)))
        z = heads[:, h] @ whiten
        d, p = np.linalg.eigh(z.T @ z / max(len(z), 1))
        d, p = d[::-1], p[:, ::-1]
        a = whiten @ p
        analysis.append(a)
        synthesis.append(np.linalg.inv(a))
        variances.append(np.maximum(d, 0.0))
    return (np.stack(analysis).astype(np.float32), np.stack(synthesis).astype(np.float32),
            np.stack(variances).astype(np.float32))


def profile_from_state(state, rope: dict, meta: dict | None = None, skip_cells: int = 1,
                       queries: dict | None = None, layer_ids: list | None = None) -> KVProfile:
    """A profile from a parsed sequence state (the calibration prefill); the first ``skip_cells`` (the
    attention sink, kept exactly by the codec) are left out. ``queries`` (model layer -> pre-RoPE queries
    ``[n_tokens, n_head * head_dim]`` of the same prefill) switch keys to the query metric; ``layer_ids`` maps
    each tensor's depth to its model layer (``state.swa.model_layer_ids``; default: the same)."""
    from ..state.values import tensor_values
    from ..state.rope import rope_supported, undo_rope

    bases, variances, synthesis = {}, {}, {}
    for sec in state.sections:
        for st in sec.streams:
            keep = st.positions >= skip_cells
            for t in st.k + st.v:
                x = tensor_values(t, rope)
                if t.kind == "k" and rope_supported(rope):
                    x = undo_rope(x, st.positions, rope)
                head_dim = rope.get("head_dim_k" if t.kind == "k" else "head_dim_v") or t.n_channels
                if t.n_channels % head_dim:
                    continue
                key, n_heads = f"{t.kind}{t.depth}", t.n_channels // head_dim
                q = (queries or {}).get(layer_ids[t.depth] if layer_ids else t.depth)
                if t.kind == "k" and q is not None and q.shape[1] % t.n_channels == 0:
                    metric = query_metric(q[st.positions[keep]], rope, n_heads)
                    bases[key], synthesis[key], variances[key] = metric_bases(x[keep], metric)
                else:
                    bases[key], variances[key] = head_bases(x[keep], n_heads)
                    synthesis[key] = bases[key].transpose(0, 2, 1)
    return KVProfile(bases, variances, meta, synthesis)


def build_profile(model_path, text_path=None, n_tokens: int = CALIBRATION_TOKENS, n_threads: int = 2,
                  predictor_texts=None) -> KVProfile:
    """Prefill ``n_tokens`` of a calibration text in a private context of the model (queries captured by
    llama.cpp's eval callback) and derive the bases; then prefill each of ``predictor_texts`` (default
    ``predict.PREDICTOR_TEXTS``, those that exist; the calibration text itself if none does) and fit the
    inter-layer predictors."""
    from ..fingerprint import model_fingerprint
    from ..hardware import load_plain_llama as Llama
    from ..state.blob import parse_seq_state
    from ..state.rope import rope_params
    from ..state.swa import model_layer_ids
    from ..textdata import text_path as bundled_or_debian

    text_path = text_path or next((p for p in map(bundled_or_debian, CALIBRATION_TEXTS) if p.is_file()), None)
    if text_path is None:
        raise FileNotFoundError("no calibration text found; pass text_path (any English plain text)")
    llm = Llama(model_path=str(model_path), n_ctx=64, verbose=False, n_threads=n_threads)
    tokens = llm.tokenize(Path(text_path).read_text(encoding="utf-8", errors="replace").encode())[:n_tokens]
    blob, queries = _prefill_with_queries(llm, tokens, n_threads)
    state = parse_seq_state(blob, model=llm)
    meta = {"model_fingerprint": model_fingerprint(str(model_path)), "text": Path(text_path).name,
            "n_tokens": len(tokens), "key_metric": "query" if queries else "identity",
            "metric_floor": METRIC_FLOOR, "metric_max_distance": METRIC_MAX_DISTANCE}
    if not queries:
        logger.warning("KV profile of %s: queries could not be captured; keys use the plain KLT", model_path)
    rope = rope_params(llm)
    meta["layers"] = "depth"  # keyed by depth over the KV sections, queries mapped to model layers
    bases = profile_from_state(state, rope, meta, queries=queries, layer_ids=model_layer_ids(llm, state))
    texts = [p for p in map(bundled_or_debian, PREDICTOR_TEXTS if predictor_texts is None else predictor_texts)
             if p.is_file()]
    samples = []
    for path in texts:
        text_tokens = llm.tokenize(path.read_text(encoding="utf-8", errors="replace").encode())[:PREDICTOR_TOKENS]
        samples.append(coded_bodies(parse_seq_state(_prefill_with_queries(llm, text_tokens, n_threads)[0], model=llm),
                                    rope, bases))
    if not samples:
        samples.append(coded_bodies(state, rope, bases))
    bases.meta["predictor_texts"] = [p.name for p in texts] or [meta["text"]]
    del llm
    return with_predictors(bases, samples)


def with_predictors(profile: KVProfile, samples: list[dict]) -> KVProfile:
    """``profile`` with inter-layer predictors fitted on ``samples`` (:func:`coded_bodies` of calibration states)."""
    meta = dict(profile.meta, predictor_features=FEATURES, predictor_ranks=RANKS)
    return KVProfile(profile.analysis, profile.variances, meta, profile.synthesis, fit_predictors(samples, ranks=RANKS))


def coded_bodies(state, rope: dict, profile: KVProfile) -> dict:
    """``(kind, depth)`` -> the rows the lossy codec codes (sinks left out, offsets removed, in ``profile``'s
    components) of the first stream of each of ``state``'s KV sections."""
    from ..codecs.kv_lossy.tensor import _Prepared

    streams = [sec.streams[0] for sec in state.sections if sec.streams]
    return {(t.kind, t.depth): _Prepared(t, st.positions, rope, profile).body for st in streams for t in st.k + st.v}


def _prefill_with_queries(llm, tokens, n_threads: int) -> tuple[bytes, dict]:
    """Prefill ``tokens`` in a fresh context of ``llm.model`` with an eval callback that copies each layer's
    pre-RoPE queries (the last ``Qcur-<layer>`` node of shape [n_head * head_dim, n_tokens]: after the bias)."""
    import ctypes

    from llama_cpp import llama_cpp as lib

    from ..state import llama_api
    from ..state.blob import read_seq_state

    md = llm.metadata
    arch = md.get("general.architecture", "llama")
    n_head = int(md.get(f"{arch}.attention.head_count", 0) or 0)
    n_q = n_head * int(md.get(f"{arch}.attention.key_length", 0) or 0) or int(md.get(f"{arch}.embedding_length", 0))
    queries: dict = {}

    def on_node(t, ask, _user):
        # struct ggml_tensor (ggml.h, llama.cpp of llama-cpp-python 0.3.x): type @0, ne[4] @16, nb[4] @48,
        # data @248, name[64] @256
        name = ctypes.string_at(t + 256, 64).split(b"\0", 1)[0].decode(errors="replace")
        if not name.startswith("Qcur-") or not name[5:].isdigit():
            return False
        if ask:
            return True
        ne = [ctypes.c_int64.from_address(t + 16 + 8 * i).value for i in range(4)]
        nb = [ctypes.c_size_t.from_address(t + 48 + 8 * i).value for i in range(2)]
        data = ctypes.c_void_p.from_address(t + 248).value
        if (ctypes.c_int32.from_address(t).value == 0 and ne[0] == n_q and ne[1] == len(tokens) and ne[2] == ne[3] == 1
                and nb == [4, 4 * n_q] and data):
            queries[int(name[5:])] = np.ctypeslib.as_array(ctypes.cast(data, ctypes.POINTER(ctypes.c_float)),
                                                           shape=(ne[1], ne[0])).copy()
        return True

    callback = lib.ggml_backend_sched_eval_callback(on_node)
    params = lib.llama_context_default_params()
    params.n_ctx = len(tokens) + 16
    params.n_batch = params.n_ubatch = len(tokens)
    params.n_threads = params.n_threads_batch = n_threads
    params.cb_eval, params.cb_eval_user_data = callback, None
    ctx = lib.llama_init_from_model(llm.model, params)
    if not ctx:
        raise RuntimeError("building a KV profile: llama.cpp could not create a calibration context")
    try:
        with llama_api.batch(len(tokens)) as batch:
            batch.set_batch(list(tokens), n_past=0, logits_all=False)
            if lib.llama_decode(ctx, batch.batch) != 0:
                raise RuntimeError("building a KV profile: the calibration prefill failed")
        blob = bytes(read_seq_state(ctx))
    finally:
        lib.llama_free(ctx)
    if n_q == 0 or len(queries) == 0:
        queries = {}
    return blob, queries


def _has_sliding_window(llm_or_path) -> bool:
    """The model declares a sliding window (its state then has a second KV section)."""
    from ..hardware import load_plain_llama

    llm = llm_or_path if hasattr(llm_or_path, "metadata") else load_plain_llama(
        model_path=str(llm_or_path), vocab_only=True, verbose=False)
    arch = llm.metadata.get("general.architecture", "")
    return bool(llm.metadata.get(f"{arch}.attention.sliding_window"))


def load_or_build_profile(llm_or_path, text_path=None, kl_table: bool = True) -> KVProfile:
    """The cached profile of a model (``Llama`` or GGUF path), built and cached on first use (seconds); a
    cached profile of an older version (1: no predictors; 2: full-rank ones) is rebuilt, its file kept for the
    payloads that name it. It comes with the model's step weights where known and (``kl_table``) its rate-quality
    table, measured on first use (``calibrate.kl_table``)."""
    from ..fingerprint import model_fingerprint
    from ..codecs.kv_lossy.weights import load_weights

    model_path = str(getattr(llm_or_path, "model_path", llm_or_path))
    fingerprint = model_fingerprint(model_path)
    index = profile_dir() / f"{fingerprint}.digest"
    digest = parse_digest(index.read_text().strip()) if index.is_file() else None
    path = profile_dir() / f"{digest.hex()}.npz" if digest else None
    # loaded once per process (every lossy save asks); a copy, since the weights and table go on it
    profile = copy.copy(load_profile_file(path, digest)) if path is not None and path.is_file() else None
    if (profile is None or profile.version < PROFILE_VERSION or profile.meta.get("predictor_ranks") != RANKS
            or (profile.meta.get("layers") != "depth" and _has_sliding_window(llm_or_path))):
        # none yet, an older version, predictors of other ranks, or a sliding-window model's profile whose second
        # KV section reused the first one's layer keys (the old file stays)
        logger.info("building the KV profile of %s (a few calibration prefills)", model_path)
        profile = build_profile(model_path, text_path)
        profile.save(profile_dir() / f"{profile.digest.hex()}.npz")
        index.write_text(profile.digest.hex())
    profile.step_weights = load_weights(fingerprint)
    if profile.step_weights is None:
        logger.info("no lossy step weights for model %s: uniform steps (seqkv calibrate --model %s measures them)",
                    fingerprint, model_path)
    if kl_table:
        from .kl_table import load_or_measure_kl_table

        profile.kl_table = load_or_measure_kl_table(model_path, profile)
    return profile
