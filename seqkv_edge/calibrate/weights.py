"""Per-head step weights for the lossy KV tier, from the model's measured sensitivity (``seqkv calibrate``).

Not every head of every layer's K or V hurts the model equally when coarsened: on the default model (probes
on GFDL-1.3) the two key heads of layer 9 differ 9x in KL for the same step, the two value heads of layer 20
7x, and whole tensors up to ~60x. The weights move bits to where errors hurt:

1. *probe*: code one tensor (a layer's K or V, in every KV section: a sliding-window model has two) at
   ``PROBE_STEP`` times its 2-bit step, keep everything else exact, restore, and measure the mean KL of the
   next-token distributions (``seqkv_edge.calibrate.quality``); 48 probes per calibration text on the default
   model (``per_head``: one head at a time, ``n_heads`` times as many; the default model's shipped weights were
   measured so, on four texts, and per-tensor probes on two texts match them: ``benchmarks/RESULTS.md``);
2. *fit*: ``KL = floor + a * MSE(step)`` per head (a per-tensor probe gives its heads one ``a``), ``MSE`` the
   quantization error in the coded domain (query-whitened keys, KLT values), computed exactly at every step of a
   grid; ``floor`` is the KL that any change to the cache costs this model (its quantized activations amplify
   one-ulp changes);
3. *allocate*: per head the step on the grid minimising ``a * MSE + λ * bits`` (bits predicted by the
   lossy coder's index statistics), λ set so the total rate equals the unweighted one; the log of each
   weight is then shrunk by ``SHRINK`` towards 0, since single probes are noisy (per-layer sensitivities
   fitted on two texts correlate only 0.58 in log). MSE and bits are those of what the coder codes: with
   format 4's inter-layer prediction, the closed-loop residuals (the probe itself coarsens the tensor: the
   sensitivity is the model's, whatever the format). ``seqkv calibrate --sensitivity FILE`` redoes this step
   alone from stored sensitivities (seconds per text, no probes).

The weights only steer the encoder (each payload stores its steps), so sessions coded with or without them
decode the same way. The known models' weights ship with the package (``data/kv_weights/``);
``seqkv calibrate`` measures any other model (two texts, under 3 minutes for a 0.5B model on 2 cores) and writes
them beside its KV profile (``$SEQKV_HOME/kv_profiles/<fingerprint>.weights.json``), which
``load_or_build_profile`` attaches; it then measures the model's rate-quality table again
(``calibrate.kl_table``) and prints what the weights gained.

Unshrunk weights (``SHRINK`` 1) do worse than halved ones: the fit overstates its extremes. Figures, with and
without the weights (``python benchmarks/lossy_weights.py``): ``benchmarks/RESULTS.md``.

    >>> sens = measure_sensitivity(model_path)       # doctest: +SKIP
    >>> allocate(sens)["v"][3]                        # step multipliers of layer 3's value heads  # doctest: +SKIP
    [0.48, 0.95]
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..codecs.kv_lossy.weights import load_weights, save_weights, weights_path
from ..textdata import BUNDLED

logger = logging.getLogger(__name__)

# probe texts: none of them is one the benchmarks and the quality figures are measured on; both ship with the package
# (a licence, and a chat between a user and an assistant written for calibration: textdata)
PROBE_TEXTS = ("/usr/share/common-licenses/GFDL-1.3", str(BUNDLED / "conversation.txt"))
N_EVAL = 128  # teacher-forced tokens a probe scores
PROBE_STEP = 8.0  # probe at 8x the 2-bit step: most tensors' KL then stands clear of the floor
SHRINK = 0.5
GRID_OCTAVES = np.arange(-16, 17) / 4.0  # step multipliers 2**g tried per tensor
FLOOR_QUANTILE, FLOOR_SHARE = 0.05, 0.9  # the floor: 0.9 x this quantile of a text's probe KLs

__all__ = ["Sensitivity", "allocate", "load_weights", "measure_sensitivity", "regrid", "save_weights",
           "weights_path"]


@dataclass
class Sensitivity:
    """Per probed head (``kinds``, ``layers``, ``heads``, in state order): fitted ``sensitivity`` a (KL per unit
    MSE, averaged over texts), and on ``GRID_OCTAVES`` the predicted excess KL ``distortion`` and ``rate`` (bits
    per value), both ``[n_heads_total, len(GRID_OCTAVES)]``."""

    kinds: list
    layers: list
    heads: list
    sensitivity: np.ndarray
    distortion: np.ndarray
    rate: np.ndarray
    texts: list
    probe_kl: np.ndarray  # [n_texts, n_heads_total]

    names = property(lambda self: [f"{k}{layer}.h{h}" for k, layer, h in zip(self.kinds, self.layers, self.heads)])


def _head_costs(prepared, scale: float, body: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per head: (mean squared error in the coded domain, bits per value) of its components of ``body`` (default:
    the tensor's; format 4: its closed-loop prediction residual) quantized at ``scale``; the bits are the
    format 3 coder's prediction from every 2nd cell's indices."""
    from ..native import require

    ffi, lib = require()
    body = prepared.body if body is None else body
    width = prepared.n_channels // prepared.n_heads
    inv = np.float32(1.0) / prepared.steps(scale).astype(np.float32)
    decoded = prepared.reconstruct(body, scale, None)  # what the decoder gets back
    err = np.square(body - decoded).reshape(len(body), prepared.n_heads, width).sum(axis=(0, 2), dtype=np.float64)
    bits = np.zeros(prepared.n_heads)
    for rows, row_inv in prepared._parts(inv, body):
        if not rows.size:
            continue
        for head in range(prepared.n_heads):
            cols = slice(head * width, (head + 1) * width)
            x, i = np.ascontiguousarray(rows[:, cols]), np.ascontiguousarray(row_inv[cols])
            bits[head] += lib.lossy3_cost(ffi.from_buffer("float[]", x), x.shape[0], x.shape[1],
                                          ffi.from_buffer("float[]", i), 2)
    n = max(len(body) * width, 1)
    return err / n, bits / n


def _coded_state(bench, profile, bits: float):
    """(rope, the 2-bit scale, the state's tensors made ready to code with their cell positions, what the coder
    codes of each: format 4 with the profile's predictors, the closed-loop residuals at that scale; else the bodies).
    Every KV section counts (a sliding-window model's two): each stream is its own closed loop, as in the codec."""
    from ..codecs.kv_lossy.codec import KVLossyCodec, rope_params
    from ..codecs.kv_lossy.predict import ClosedLoop
    from ..codecs.kv_lossy.tensor import _Prepared

    rope = rope_params(bench.ev.llm)
    codec = KVLossyCodec(bits=bits)
    codec.encode_state(bench.state, rope, profile=profile)
    prepared, positions, residuals = [], [], {}
    for sec in bench.state.sections:
        for st in sec.streams:
            stream = [_Prepared(t, st.positions, rope, profile) for t in st.k + st.v]
            if profile.predictors:
                residuals.update(ClosedLoop(stream, profile).residuals(codec.last_scale, None))
            prepared += stream
            positions += [st.positions] * len(stream)
    return rope, codec.last_scale, list(zip(prepared, positions)), [residuals.get(p, p.body) for p in prepared]


def _grids(prepared, coded, scale: float):
    """Per head, in state order: (MSE, rate) on ``GRID_OCTAVES`` around ``scale``, and its (kind, layer, head)."""
    mse, rate, units = [], [], []
    for p, body in zip(prepared, coded):
        head_mse, head_rate = (np.array(grid).T for grid in zip(*(_head_costs(p, scale * 2.0 ** g, body)
                                                                    for g in GRID_OCTAVES)))
        mse += list(head_mse)
        rate += list(head_rate)
        units += [(p.kind, p.layer, head) for head in range(p.n_heads)]
    return np.array(mse), np.array(rate), units


def _copy_head(dst, src, head: int, head_dim: int) -> None:
    """Copy one head's values between two views of the same tensor (``state.KVTensor``), in either layout."""
    if dst.transposed:
        dst.data[head * head_dim:(head + 1) * head_dim] = src.data[head * head_dim:(head + 1) * head_dim]
    else:
        width = head_dim // dst.block_size * dst.element_bytes
        dst.data[:, head * width:(head + 1) * width] = src.data[:, head * width:(head + 1) * width]


def _probe_text(model_path, text_path, profile, bits: float, probe_step: float, n_context: int, n_eval: int,
                per_head: bool = False, bar=None):
    """(probe KL, probe MSE, MSE grid, rate grid, (kind, layer, head) units) of every head on one text; a probe codes
    one tensor (``per_head``: one head of it) coarsely and keeps the rest exact. Per-tensor probes give every head of
    the tensor the tensor's KL and mean MSE: ``n_heads`` times fewer probes."""
    from ..codecs.kv_lossy.tensor import _decode_tensor
    from ..state.blob import parse_seq_state
    from .quality import QualityBench

    bench = QualityBench(model_path, text_path, n_context=n_context, n_eval=n_eval, n_greedy=0)
    rope, scale, prepared, coded = _coded_state(bench, profile, bits)
    kls, probe_mse = [], []
    for index, (p, positions) in enumerate(prepared):
        head_mse = _head_costs(p, scale * probe_step)[0]
        coarse = bytearray(bench.blob)  # the probe codes the tensor itself: its sensitivity, whatever the format
        coarse_view = parse_seq_state(coarse, model=bench.ev.llm).tensors()[index]
        _decode_tensor(p.encode(scale * probe_step), coarse_view, positions, rope, profile)
        if not per_head:
            kls += [bench.evaluate(bytes(coarse))["kl_mean"]] * p.n_heads
            probe_mse += [float(np.mean(head_mse))] * p.n_heads
        for head in range(p.n_heads if per_head else 0):
            blob = bytearray(bench.blob)
            _copy_head(parse_seq_state(blob, model=bench.ev.llm).tensors()[index], coarse_view, head,
                       p.n_channels // p.n_heads)
            kls.append(bench.evaluate(bytes(blob))["kl_mean"])
            probe_mse.append(head_mse[head])
        if bar is not None:
            bar.update(1)
    mse, rate, units = _grids([p for p, _ in prepared], coded, scale)
    del bench
    return np.array(kls), np.array(probe_mse), mse, rate, units


def _check_texts(model_path, text_paths, n_tokens: int) -> None:
    """Refuse missing or short texts before minutes of probing, not after."""
    from ..hardware import load_plain_llama as Llama
    from ..textdata import read_text

    missing = [str(t) for t in text_paths if not Path(t).is_file()]
    if missing:
        raise FileNotFoundError(f"calibration texts not found: {', '.join(missing)} (the default ones come with "
                                "Debian's base-files and fortunes packages: apt-get install fortunes)")
    vocab = Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    for path in text_paths:
        n = len(vocab.tokenize(read_text(path)[0].encode("utf-8")))
        if n < n_tokens:
            raise ValueError(f"calibration text {path} has {n} tokens; a probe needs {n_tokens} "
                             "(n_context + n_eval)")


def measure_sensitivity(model_path, text_paths=PROBE_TEXTS, *, bits: float = 2.0, probe_step: float = PROBE_STEP,
                        n_context: int = 1000, n_eval: int = N_EVAL, per_head: bool = False,
                        progress: bool = True) -> Sensitivity:
    """Probe every K and V tensor (``per_head``: head) of the model on each text (see the module doc)."""
    from tqdm import tqdm

    from ..textdata import text_path
    from .profile import load_or_build_profile

    text_paths = [text_path(t) for t in text_paths]
    _check_texts(model_path, text_paths, n_context + n_eval)
    profile = load_or_build_profile(model_path, kl_table=False)
    profile.step_weights = None  # probe around uniform steps
    bar = tqdm(total=len(profile.analysis) * len(text_paths), desc="probing KV tensors", unit="tensor",
               disable=not progress)
    probe_kl, distortion, rate, fits = [], [], [], []
    with bar:
        for text in text_paths:
            kl, probe_mse, mse, text_rate, units = _probe_text(model_path, text, profile, bits, probe_step,
                                                               n_context, n_eval, per_head, bar)
            floor = FLOOR_SHARE * float(np.quantile(kl, FLOOR_QUANTILE))
            a = np.maximum(kl - floor, 1e-9) / np.maximum(probe_mse, 1e-30)
            logger.info("%s: KL floor %.5f, probe KL %.5f..%.5f", text, floor, kl.min(), kl.max())
            probe_kl.append(kl)
            fits.append(a)
            distortion.append(a[:, None] * mse)
            rate.append(text_rate)
    kinds, layers, heads = (list(col) for col in zip(*units))
    return Sensitivity(kinds=kinds, layers=layers, heads=heads, sensitivity=np.mean(fits, axis=0),
                       distortion=np.mean(distortion, axis=0), rate=np.mean(rate, axis=0), texts=list(text_paths),
                       probe_kl=np.array(probe_kl))


def regrid(model_path, sensitivity: dict, text_paths=PROBE_TEXTS, *, bits: float = 2.0, n_context: int = 1000,
           progress: bool = True) -> Sensitivity:
    """A :class:`Sensitivity` from per-head sensitivities measured before (``{"k0.h0": a, ...}``, as
    ``seqkv calibrate`` stores them) and the MSE / rate grids of what the coder codes now, measured on
    ``text_paths`` without probing (seconds per text): when the coder changes (format 4 codes prediction
    residuals) but the model, and so its sensitivity, does not."""
    from tqdm import tqdm

    from ..textdata import text_path
    from .profile import load_or_build_profile
    from .quality import QualityBench

    text_paths = [text_path(t) for t in text_paths]
    _check_texts(model_path, text_paths, n_context + 1)
    profile = load_or_build_profile(model_path, kl_table=False)
    profile.step_weights = None
    distortion, rate, units = [], [], None
    for text in tqdm(text_paths, desc="KV grids", unit="text", disable=not progress):
        bench = QualityBench(model_path, text, n_context=n_context, n_eval=1, n_greedy=0)
        _, scale, prepared, coded = _coded_state(bench, profile, bits)
        mse, text_rate, units = _grids([p for p, _ in prepared], coded, scale)
        del bench
        names = [f"{k}{layer}.h{h}" for k, layer, h in units]
        missing = sorted(set(names) - set(sensitivity))
        if missing:
            raise ValueError(f"no sensitivity for {len(missing)} heads of this model ({', '.join(missing[:4])}...): "
                             "measure it with seqkv calibrate")
        a = np.array([sensitivity[n] for n in names])
        distortion.append(a[:, None] * mse)
        rate.append(text_rate)
    kinds, layers, heads = (list(col) for col in zip(*units))
    return Sensitivity(kinds=kinds, layers=layers, heads=heads, sensitivity=a, distortion=np.mean(distortion, axis=0),
                       rate=np.mean(rate, axis=0), texts=list(text_paths), probe_kl=np.zeros((0, len(names))))


def allocate(sens: Sensitivity, shrink: float = SHRINK) -> dict:
    """Step multipliers ``{"k": [per layer: [per head]], "v": [...]}`` (geometric mean 1) minimising the predicted
    KL at the rate of uniform steps; ``shrink`` scales their logs (1: the optimum as fitted, 0: uniform)."""
    rows = np.arange(len(sens.names))
    centre = int(np.argmin(np.abs(GRID_OCTAVES)))
    target = sens.rate[:, centre].mean()

    def pick(lam):
        choice = np.argmin(sens.distortion + lam * sens.rate, axis=1)
        return choice, sens.rate[rows, choice].mean()

    lo, hi = 1e-12, 1e3
    for _ in range(80):  # bisection on log λ: the rate falls as λ grows
        lam = math.sqrt(lo * hi)
        lo, hi = (lam, hi) if pick(lam)[1] > target else (lo, lam)
    choice, _ = pick(hi)
    log_w = GRID_OCTAVES[choice] * shrink
    log_w -= log_w.mean()
    n_layer, n_head = max(sens.layers) + 1, max(sens.heads) + 1
    weights = {"k": [[1.0] * n_head for _ in range(n_layer)], "v": [[1.0] * n_head for _ in range(n_layer)]}
    for kind, layer, head, lw in zip(sens.kinds, sens.layers, sens.heads, log_w):
        weights[kind][layer][head] = round(float(2.0 ** lw), 4)
    return weights
