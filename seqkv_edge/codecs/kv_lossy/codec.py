"""Lossy KV tier: quantized, entropy-coded KV snapshots with rate control (codec id ``kv_lossy``).

Per tensor (one layer's K or V), on float32 values ``[n_cells, n_channels]``:

1. keys: RoPE undone (``seqkv_edge.state.rope``), so a channel's constant part is a constant again;
2. *sink* cells (positions ``< n_sink``: the attention sink the model parks attention on) kept as f16;
3. per-channel offsets (means) subtracted; formats 2 and later with a model profile (``seqkv_edge.calibrate.profile``): each
   head mapped onto model-derived components (values: their KLT; keys: whitened by the queries' metric, then
   KLT, so that squared error is squared error in attention scores);
3b. format 4 with a profile holding predictors (version 2 or 3, ``seqkv_edge.codecs.kv_lossy.predict``): tensors coded layer
   by layer, K first; each one's components minus a linear prediction from the *decoded* components of the
   previous layer's K and V (and, for V, its own layer's K): a closed loop, so errors do not accumulate;
4. one uniform step per head: ``step = scale * weight * rms(head)`` with ``weight`` the K or V share of the
   bit allocation times the head's step weight (``seqkv_edge.calibrate.weights``: measured per-head sensitivity,
   attached to the model profile, or ``weights=`` given); ``scale`` is the rate-control knob. Per-component
   entropy coding makes this reverse water-filling: a component whose spread is below the step costs almost nothing. Format 2: the
   last ``N_RECENT`` cells get ``RECENT_DIVISOR`` x finer steps (the next tokens attend to them most);
5. indices entropy-coded by rANS (``native/lossy3.c``; formats 1 and 2: ``native/lossy.c``): format 3 gives each channel / component a static model
   (P(0), P(1 | not 0) and a geometric tail, 30 bits per channel and stream) fitted to its own indices, codes
   channel by channel with four interleaved states, and predicts its size from the index statistics (the rate
   search codes nothing); formats 1 and 2 used adaptive models.

Any change to the cache, even one f16 ulp in a few values, costs a Q4_K_M model some KL (its quantized activations
amplify it): every quality figure has that floor. Figures, and the commands that measure them:
``benchmarks/RESULTS.md``.

Decoding inverts this and writes each tensor in the *target* tensor's cache type (f16, bf16, f32, q8_0,
q4_0; quantized types with llama.cpp's Hadamard rotation where it applies).

Rate control: ``bits`` (average bits per KV value over the whole state, side information counted) is hit
by a secant search on log(scale) over size estimates from every 32nd cell (format 4: those cells run through the
closed loop), stopped within 5% and 0.1 bit (usually two estimates), then by feedback while coding: each tensor's
scale is moved so that the coded total lands on the target (:class:`_Feedback`). Formats 1 and 2 code the
whole state at each search step. ``max_kl`` maps to a scale through the model's rate-quality table
(``kl_table.KLTable``, measured on first use and attached to its profile); without one, through tables measured
with the quality harness on the default model (Qwen2.5-Coder-0.5B; ``benchmarks/lossy_kl_table.py``). A ``bits``
target whose expected KL on the model's table is above ``POOR_KL`` logs a warning once.

    >>> codec = KVLossyCodec(bits=2.0)                                   # doctest: +SKIP
    >>> payloads = codec.encode_state(state, rope_params(llm))  # one payload per tensor  # doctest: +SKIP
    >>> codec.decode_state(payloads, skeleton_tensors, positions, rope)  # fills the views in place  # doctest: +SKIP
    >>> profile = load_or_build_profile(llm)  # format 2: model-derived bases  # doctest: +SKIP
    >>> payloads = codec.encode_state(state, rope_params(llm), profile=profile)  # doctest: +SKIP

Format 6 is format 5 with each coded stream in the segment coder's format 2 (``codecs/segcode.py``): per-channel
static models, independent segments coded in parallel threads, or on a GPU (``device="cuda"``), to the same bytes.

The payload of one tensor (formats 1 to 6) is described in ``codecs/kv_lossy/tensor.py``.
"""
from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ...errors import CorruptDataError, ModelMismatchError
from ...state.rope import rope_params
from ...state.values import store_values, tensor_values
from ..registry import register_codec
from ..base import StateCodec
from .predict import ClosedLoop, coding_rank, forget_unused
from . import backend
from .backend import DEVICES
from .profile import KVProfile
from .weights import valid_weights
from .tensor import FORMAT_VERSION, VERSIONS, _entropy_decode, _predicted, _Prepared, _synthesize

logger = logging.getLogger(__name__)

# max_kl -> scale: (scale, mean KL) measured with the quality harness on the default model (GPL-3, 1,000
# context tokens, flash attention), interpolated log-log; slopes 1.5 / 2.7 outside the table
_KL_TABLE = ((0.144, 0.0046), (0.300, 0.0107), (0.601, 0.0306), (0.883, 0.0838), (1.314, 0.256))
_KL_SLOPES = (1.5, 2.7)
# format 4 with the model's profile (version 3: reduced-rank key predictors) and its step weights (calibrate.weights),
# same harness, mean of GPL-3, MPL-2.0 and fortunes/people (benchmarks/lossy_kl_table.py; per text within ~25%);
# below ~0.003 nats the model's own floor dominates (any change costs that much)
_KL_TABLE_PROFILE = ((0.12, 0.0029), (0.2, 0.0036), (0.3, 0.0050), (0.45, 0.0076), (0.65, 0.0124), (0.9, 0.0254),
                     (1.3, 0.0395))
_KL_SLOPES_PROFILE = (0.6, 1.5)
_SCALE_RANGE = (1e-4, 64.0)
POOR_KL = 0.01  # a bits target whose expected KL is above this says so (and what max_kl would take)
_SEARCH_ROW_EVERY = 32  # formats 3 and 4 predict the rate during the search from every 32nd cell
_SEARCH_MIN_ROWS = 60  # ... but at least 60 cells of each tensor (small states: every cell)
_SEARCH_TOLERANCE = 0.05  # ... to within 5%, and within 0.1 bit per value (coding steers the rest: _Feedback,
_SEARCH_TOLERANCE_BITS = 0.1  # which moves scales by at most _FEEDBACK_RANGE: ~0.2 bit per value)
_DEFAULT_SLOPE = -1 / math.log(2)  # bits per value per unit of ln(scale): 1 bit per doubling of the step
_FEEDBACK_RANGE = 0.15  # how far (in ln(scale)) the feedback may move a tensor's scale from the search's
# a decode splits its prediction chain's products over the cores from this many cores on: with fewer, entropy
# decoding and synthesis in the pool keep every core busy and the splits only add waits (benchmarks/RESULTS.md)
_SPLIT_CHAIN_CORES = 4

__all__ = ["KVLossyCodec", "KVProfile", "rope_params", "tensor_values", "store_values"]


def scale_for_kl(max_kl: float, profiled: bool = False) -> float:
    """The step scale whose measured mean KL on the calibration set is ``max_kl`` (log-log interpolation);
    ``profiled``: the table of format 3 with a model profile and its step weights."""
    table, (low, high) = (_KL_TABLE_PROFILE, _KL_SLOPES_PROFILE) if profiled else (_KL_TABLE, _KL_SLOPES)
    log_s, log_kl = np.log(np.array(table)).T
    x = math.log(max_kl)
    if x < log_kl[0]:
        return float(min(_SCALE_RANGE[1], max(_SCALE_RANGE[0], math.exp(log_s[0] + (x - log_kl[0]) / low))))
    if x > log_kl[-1]:
        return float(min(_SCALE_RANGE[1], math.exp(log_s[-1] + (x - log_kl[-1]) / high)))
    return float(math.exp(np.interp(x, log_kl, log_s)))


class _Feedback:
    """Rate control while coding (formats 3 and later): the search's scale, moved for each tensor so that the
    coded total lands on the target. The search estimates each tensor's size from a subsample, ~1-3% off
    the coded size (the sample, the models fitted to it); each coded tensor shows how far off, and the tensors
    still to code take up the difference through the rate's slope in ln(scale), at most ``_FEEDBACK_RANGE``
    from the search's scale. Nothing is coded twice."""

    def __init__(self, scale: float, estimates: dict, target_bits: float, slope: float):
        self.log_scale, self.estimates, self.target, self.slope = math.log(scale), estimates, target_bits, slope
        self.left_bits = sum(estimates.values())  # the estimates of the tensors not coded yet ...
        self.left_values = sum(p.n_cells * p.n_channels for p in estimates)  # ... and their values
        self.done_bits = self.done_expected = 0.0  # coded so far, and what the estimates said for it

    def scale(self, p) -> float:
        """The scale to code ``p`` at (the next tensor not coded yet)."""
        prior = 0.05 * (self.left_bits + self.done_expected)  # trust the estimates until enough is coded
        ratio = (self.done_bits + prior) / (self.done_expected + prior)
        shift = ((self.target - self.done_bits - ratio * self.left_bits)
                 / (ratio * self.slope * max(self.left_values, 1)))
        return math.exp(self.log_scale + min(max(shift, -_FEEDBACK_RANGE), _FEEDBACK_RANGE))

    def coded(self, p, scale: float, bits: float) -> None:
        """``p`` was coded at ``scale`` in ``bits``."""
        n_values, estimate = p.n_cells * p.n_channels, self.estimates[p]
        self.left_bits -= estimate
        self.left_values -= n_values
        self.done_expected += estimate + self.slope * n_values * (math.log(scale) - self.log_scale)
        self.done_bits += bits


_SAID: set = set()  # (a table's points, bits) already warned about in this process


def _say_if_poor(bits: float, expected_kl: float, table) -> None:
    """Warn once per model and rate when a ``bits`` target leaves this model above ``POOR_KL``: some models need
    more bits than others for the same quality, and ``max_kl`` picks the rate that keeps it."""
    key = (tuple(table.points), round(bits, 3))  # the table is loaded anew for every save: its content names it
    if expected_kl > POOR_KL and key not in _SAID:
        _SAID.add(key)
        logger.warning("kv_lossy: at %g bits per value this model's expected next-token KL is %.3f nats (above %g); "
                       "max_kl=%g takes about %.1f bits per value", bits, expected_kl, POOR_KL, POOR_KL,
                       table.bits_for(POOR_KL))


# --- the codec -------------------------------------------------------------------------------------------

@register_codec
class KVLossyCodec(StateCodec):
    """Lossy KV snapshots at a target rate (``bits`` per value) or quality (``max_kl`` nats per token).

    ``encode_state`` returns one payload per tensor in ``state.tensors()`` order; ``decode_state`` fills the
    writable tensor views of a skeleton (``state.skeleton_layout``) in their own cache types. Both need the
    model's ``rope`` (keys are coded with RoPE undone) and take its KV profile when there is one.
    """

    codec_id = "kv_lossy"
    needs_model = True

    def __init__(self, bits: float | None = None, max_kl: float | None = None, version: int = FORMAT_VERSION,
                 weights: dict | None = None, device: str = "auto", *, scale: float | None = None):
        if sum(x is not None for x in (bits, max_kl, scale)) != 1:
            raise ValueError("KVLossyCodec: give exactly one of bits (target bits per value) or max_kl")
        if scale is not None and not _SCALE_RANGE[0] <= scale <= _SCALE_RANGE[1]:
            raise ValueError(f"KVLossyCodec(scale={scale}): choose {_SCALE_RANGE[0]} to {_SCALE_RANGE[1]}")
        if bits is not None and not 0.05 <= bits <= 16:
            raise ValueError(f"KVLossyCodec(bits={bits}): choose 0.05 to 16 bits per value")
        if max_kl is not None and not max_kl > 0:
            raise ValueError(f"KVLossyCodec(max_kl={max_kl}): must be > 0 nats per token")
        if version not in VERSIONS:
            raise ValueError(f"KVLossyCodec(version={version}): this seqkv_edge writes versions {VERSIONS}")
        if weights is not None and not valid_weights(weights):
            raise ValueError("KVLossyCodec(weights=...): {'k': [per-layer step multipliers > 0, or per-head lists "
                             "of them], 'v': [...]}")
        if device not in DEVICES:
            raise ValueError(f"KVLossyCodec(device={device!r}): choose one of {DEVICES}")
        self.bits, self.max_kl, self.version = bits, max_kl, version
        self.scale = scale  # a fixed step scale (measuring the rate-quality table): no rate control
        # format 6: where the segment coder runs; the bytes are the same on every device, so not in the config
        self.device = device
        self.weights = None if weights is None else {k: list(ws) for k, ws in weights.items()}
        self.last_scale: float | None = None
        self.last_expected_kl: float | None = None  # the KL the model's table expects at the last scale coded

    def get_config(self) -> dict:
        config = {"id": self.codec_id, "bits": self.bits, "max_kl": self.max_kl, "version": self.version}
        if self.scale is not None:
            config["scale"] = self.scale
        if self.weights is not None:
            config["weights"] = self.weights
        return config

    def encode_state(self, state, rope: dict | None = None, profile: KVProfile | None = None) -> list[bytes]:
        """One payload per tensor of ``state`` (a ``SeqState``), rate-controlled over the whole state.

        With a ``profile`` (``calibrate.profile.load_or_build_profile(llm)``, format version 2 or later) each head is
        coded in the model's components: about 3x less KL at 2 bits per value on the default model; the
        profile's ``step_weights`` (``seqkv_edge.calibrate.weights``) then set per-head steps unless the codec was
        given ``weights`` (``weights={}``: uniform steps).
        """
        if profile is not None and self.version < 2:
            raise ValueError("KVLossyCodec(version=1) cannot use a KV profile: profiles need format version 2")
        prepared, loops = [], []
        coder = self._coder(state.tensors(), self.version)
        for sec in state.sections:
            for st in sec.streams:
                stream = [_Prepared(t, st.positions, rope, profile, self.version, coder) for t in st.k + st.v]
                prepared += stream
                if self.version >= 4 and profile is not None and profile.predictors:
                    loops.append(ClosedLoop(stream, profile))
        loops = [loop for loop in loops if loop.matrix]
        n_values = sum(p.n_cells * p.n_channels for p in prepared)
        weights = self.weights if self.weights is not None else getattr(profile, "step_weights", None)

        def residuals(scale, row_every=1):
            return {p: r for loop in loops for p, r in loop.residuals(scale, weights, row_every).items()}

        feedback = None
        table = getattr(profile, "kl_table", None)
        if self.scale is not None:
            scale = self.scale
        elif self.max_kl is not None:
            scale = table.scale_for(self.max_kl) if table is not None else scale_for_kl(
                self.max_kl, profiled=any(p.digest is not None for p in prepared))
            scale = min(max(scale, _SCALE_RANGE[0]), _SCALE_RANGE[1])
        elif self.version < 3:
            scale, payloads = self._search_coding(prepared, n_values, weights)
            self.last_scale = scale
            return payloads
        else:
            scale, feedback = self._search(prepared, n_values, weights, residuals)
        coded = {}

        def code(p, residual, decoded=True):
            s = feedback.scale(p) if feedback is not None else scale
            coded[p], rows = p.encode(s, weights, residual, decoded) if decoded else (p.encode(s, weights), None)
            if feedback is not None:
                feedback.coded(p, s, 8 * len(coded[p]))
            return s, rows

        for loop in loops:
            loop.run(code, weights)
        for p in prepared:
            if p not in coded:
                code(p, None, decoded=False)
        payloads = [coded[p] for p in prepared]
        self.last_scale = scale
        self.last_expected_kl = table.kl_at(scale) if table is not None else None
        if table is not None and self.bits is not None:
            _say_if_poor(self.bits, self.last_expected_kl, table)
        logger.debug("kv_lossy: scale %.4g, %.3f bits per value", scale,
                     8 * sum(map(len, payloads)) / max(n_values, 1))
        return payloads

    def _coder(self, tensors, version: int, threads: int | None = None):
        """The segment coder's backend (``device``) for format ``version`` (6: else None) and these tensors; on the
        CPU with ``threads`` threads (default: all cores)."""
        if version < 6:
            return None
        return backend.for_state(self.device, sum(2 * t.n_cells * t.n_channels for t in tensors), threads)

    def _search_coding(self, prepared, n_values: int, weights: dict | None) -> tuple[float, list]:
        """Formats 1 and 2: secant search coding the whole state at every step; the best step's payloads."""
        def coded_rate(log_s):
            payloads = [p.encode(math.exp(log_s), weights) for p in prepared]
            return 8 * sum(map(len, payloads)) / max(n_values, 1), payloads

        return self._secant(coded_rate, self.bits, tolerance=0.01)

    def _search(self, prepared, n_values: int, weights: dict | None, residuals) -> tuple[float, _Feedback]:
        """Formats 3 and later: secant search on log(scale) for the target rate (rate falls ~1 bit per doubling
        of the step) on the sizes the static models predict from the index statistics of every 32nd cell
        (format 4: of those cells' closed-loop residuals, ``residuals(scale, row_every)``); coding then steers
        the rest (:class:`_Feedback`)."""
        memo = {}
        fewest = min((p.n_cells for p in prepared), default=0)
        row_every = max(1, min(_SEARCH_ROW_EVERY, fewest // _SEARCH_MIN_ROWS))

        def predicted(log_s):
            if log_s not in memo:
                scale = math.exp(log_s)
                coded = residuals(scale, row_every)
                memo[log_s] = {p: p.estimate_bits(scale, weights, row_every, coded.get(p)) for p in prepared}
            return sum(memo[log_s].values()) / max(n_values, 1), None

        start = min(max(2.0 ** (0.5 - self.bits), _SCALE_RANGE[0]), _SCALE_RANGE[1])  # within ~1 octave (profiled)
        tolerance = min(_SEARCH_TOLERANCE, _SEARCH_TOLERANCE_BITS / self.bits)
        scale, _ = self._secant(predicted, self.bits, tolerance=tolerance, start=start)
        x = min(memo, key=lambda log_s: abs(log_s - math.log(scale)))
        rate = {log_s: sum(bits.values()) / max(n_values, 1) for log_s, bits in memo.items()}
        others = sorted((abs(log_s - x), log_s) for log_s in rate if log_s != x)
        slope = _DEFAULT_SLOPE
        if others and others[0][0] > 1e-6:
            near = others[0][1]
            slope = min(max((rate[near] - rate[x]) / (near - x), -4.0), -0.05)  # a noisy estimate stays sane
        return scale, _Feedback(scale, memo[x], self.bits * n_values, slope)

    @staticmethod
    def _secant(rate, target: float, tolerance: float, start: float = 0.5):
        """(scale, extra) with ``rate(log scale) = (bits per value, extra)`` closest to ``target``."""
        lo, hi = (math.log(s) for s in _SCALE_RANGE)
        x0 = math.log(start)
        b0, extra0 = rate(x0)
        if abs(b0 / target - 1) < tolerance:
            return start, extra0
        x1 = min(hi, max(lo, x0 + (b0 - target) * math.log(2)))
        b1, extra1 = rate(x1)
        tried = [(abs(b0 / target - 1), x0, extra0), (abs(b1 / target - 1), x1, extra1)]
        for _ in range(12):
            if min(tried, key=lambda r: r[0])[0] < tolerance or b1 == b0:
                break
            x2 = min(hi, max(lo, x1 + (target - b1) * (x1 - x0) / (b1 - b0)))
            x0, b0 = x1, b1
            x1 = x2
            b1, extra1 = rate(x1)
            tried.append((abs(b1 / target - 1), x1, extra1))
        _, x, extra = min(tried, key=lambda r: r[0])
        return math.exp(x), extra

    def decode_state(self, payloads, tensors, positions, rope: dict | None = None,
                     profile: KVProfile | None = None) -> None:
        """Fill ``tensors`` (writable ``KVTensor`` views, ``tensors()`` order) from ``payloads``.

        ``positions`` is one int32 array of cell positions per stream (``stream.positions``), in section and
        stream order; a single array is used for every tensor. Rotated (format 2) payloads use ``profile`` if
        its digest matches, else the cached profile of that digest (``$SEQKV_HOME/kv_profiles``).
        """
        payloads = list(payloads)
        if len(payloads) != len(tensors):
            raise CorruptDataError(f"decoding a lossy KV state: {len(payloads)} payloads for {len(tensors)} tensors")
        per_stream = positions if isinstance(positions, (list, tuple)) else None
        stream_index = {}
        for t in tensors:
            stream_index.setdefault((t.section, t.stream), len(stream_index))
        decoded = [{} for _ in stream_index]  # per stream: format 4's features
        # each stream's tensors in coding order: format 4 predicts from the tensors decoded before
        order = sorted(range(len(tensors)), key=lambda i: (stream_index[tensors[i].section, tensors[i].stream],
                                                           *coding_rank(tensors[i].kind, tensors[i].depth)))
        n_threads = os.cpu_count() or 1
        # tensors entropy-decode side by side in the pool, each in one thread
        coder = self._coder(tensors, max((p[0] for p in payloads if len(p)), default=0), threads=1)
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            # the entropy decoding of every tensor is independent: it runs ahead in the pool (a few tensors, to bound
            # memory) while the predictions, which need the tensors before, follow in coding order here; each
            # tensor's synthesis into its cache (which no later tensor needs) goes back to the pool
            ahead, submitted, finishing = {}, 0, []
            for step, i in enumerate(order):
                for j in order[submitted:step + 2 * n_threads + 1]:
                    ahead[j] = pool.submit(_entropy_decode, payloads[j], tensors[j], coder)
                    submitted += 1
                tensor = tensors[i]
                stream = stream_index[tensor.section, tensor.stream]
                pos = per_stream[stream] if per_stream is not None else positions
                pos = np.asarray(pos, dtype=np.int32)
                if len(pos) != tensor.n_cells:
                    raise ModelMismatchError(f"decoding {tensor.name}: {len(pos)} cell positions for "
                                             f"{tensor.n_cells} cells")
                coded = ahead.pop(i).result()
                found, body = _predicted(coded, tensor, profile, decoded[stream],
                                         split=n_threads >= _SPLIT_CHAIN_CORES)
                finishing.append(pool.submit(_synthesize, coded, body, found, tensor, pos, rope, split=False))
                profile = found or profile
                forget_unused(decoded[stream], tensor.depth)
            for done in finishing:
                done.result()  # its error, if any
