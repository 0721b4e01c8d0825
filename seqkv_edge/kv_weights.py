"""Per-layer step weights for the lossy KV tier, from the model's measured sensitivity (``seqkv calibrate``).

Not every layer's K or V hurts the model equally when coarsened: on the default model one layer's values
cost up to 50x more KL than another's for the same error. The weights move bits to where errors hurt:

1. *probe*: code one tensor (one layer's K or V) at ``PROBE_STEP`` times its 2-bit step, keep every other
   tensor exact, restore, and measure the mean KL of the next-token distributions (``seqkv_edge.quality``);
   48 probes per calibration text;
2. *fit*: ``KL = floor + a * MSE(step)`` per tensor, ``MSE`` the quantization error in the coded domain
   (query-whitened keys, KLT values), computed exactly at every step of a grid; ``floor`` is the KL that
   any change to the cache costs this model (its quantized activations amplify one-ulp changes);
3. *allocate*: per tensor the step on the grid minimising ``a * MSE + λ * bits`` (bits predicted by the
   lossy coder's index statistics), λ set so the total rate equals the unweighted one; the log of each
   weight is then shrunk by ``SHRINK`` towards 0, since single probes are noisy (the sensitivities fitted on
   two texts correlate only 0.58 in log).

The weights only steer the encoder (each payload stores its steps), so sessions coded with or without them
decode the same way. The default model's weights ship with the package (``data/kv_weights/``);
``seqkv calibrate`` measures any other model in a few minutes and writes them beside its KV profile
(``$SEQKV_HOME/kv_profiles/<fingerprint>.weights.json``), which ``load_or_build_profile`` then attaches.

Measured on the default model at 2 bits per value, profile on, six texts none of which were probed
(GPL-3, MPL-2.0, Apache-2.0, fortunes literature, people, wisdom; 1,000 context + 256 teacher-forced tokens):
see ``benchmarks/lossy_weights.py``.

    >>> sens = measure_sensitivity(model_path)       # doctest: +SKIP
    >>> allocate(sens)["k"][:3]                       # per-layer step multipliers of the keys  # doctest: +SKIP
    [2.04, 1.87, 0.94]
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .codecs.kv_lossy import valid_weights
from .errors import CorruptDataError

logger = logging.getLogger(__name__)

WEIGHTS_VERSION = 1
# probe texts: none of them is one the benchmarks and the quality figures are measured on
PROBE_TEXTS = ("/usr/share/common-licenses/GFDL-1.3", "/usr/share/games/fortunes/art",
               "/usr/share/games/fortunes/science", "/usr/share/games/fortunes/computers")
PROBE_STEP = 8.0  # probe at 8x the 2-bit step: most tensors' KL then stands clear of the floor
SHRINK = 0.5
GRID_OCTAVES = np.arange(-16, 17) / 4.0  # step multipliers 2**g tried per tensor
FLOOR_QUANTILE, FLOOR_SHARE = 0.05, 0.9  # the floor: 0.9 x this quantile of a text's probe KLs

__all__ = ["Sensitivity", "allocate", "load_weights", "measure_sensitivity", "save_weights", "weights_path"]


@dataclass
class Sensitivity:
    """Per tensor (``names``, ``kinds``, ``layers`` in state order): fitted ``sensitivity`` a (KL per unit MSE,
    averaged over texts), and on ``GRID_OCTAVES`` the predicted excess KL ``distortion`` and ``rate`` (bits per
    value), both ``[n_tensors, len(GRID_OCTAVES)]``."""

    names: list
    kinds: list
    layers: list
    sensitivity: np.ndarray
    distortion: np.ndarray
    rate: np.ndarray
    texts: list
    probe_kl: np.ndarray  # [n_texts, n_tensors]


def _quantization_mse(prepared, scale: float) -> float:
    """Mean squared error (coded domain) of quantizing ``prepared``'s cells at ``scale``."""
    inv = np.float32(1.0) / prepared.steps(scale).astype(np.float32)
    err = 0.0
    for rows, row_inv in prepared._parts(inv):
        if rows.size:
            err += float(np.square(rows - np.rint(rows * row_inv) / row_inv).sum(dtype=np.float64))
    return err / (prepared.n_cells * prepared.n_channels)


def _probe_text(model_path, text_path, profile, bits: float, probe_step: float, n_context: int, n_eval: int,
                bar=None):
    """(probe KL per tensor, MSE grid, rate grid, tensor list) on one text."""
    from .codecs.kv_lossy import KVLossyCodec, _decode_tensor, _Prepared, rope_params
    from .quality import QualityBench
    from .state import parse_seq_state

    bench = QualityBench(model_path, text_path, n_context=n_context, n_eval=n_eval, n_greedy=0)
    rope = rope_params(bench.ev.llm)
    codec = KVLossyCodec(bits=bits)
    codec.encode_state(bench.state, rope, profile=profile)
    scale = codec.last_scale
    if len(bench.state.sections) != 1 or len(bench.state.sections[0].streams) != 1:
        raise ValueError("seqkv calibrate: only single-section, single-stream states (no iSWA) are supported")
    stream = bench.state.sections[0].streams[0]
    tensors = bench.state.tensors()
    grid = [scale * 2.0 ** g for g in GRID_OCTAVES]
    kls, mse, rate = [], [], []
    for tensor in tensors:
        prepared = _Prepared(tensor, stream.positions, rope, profile)
        blob = bytearray(bench.blob)
        view = parse_seq_state(blob, model=bench.ev.llm).tensors()[len(kls)]
        _decode_tensor(prepared.encode(scale * probe_step), view, stream.positions, rope, profile)
        kls.append(bench.evaluate(bytes(blob))["kl_mean"])
        n_values = prepared.n_cells * prepared.n_channels
        mse.append([_quantization_mse(prepared, s) for s in grid] + [_quantization_mse(prepared, scale * probe_step)])
        rate.append([prepared.estimate_bits(s, None, 2) / n_values for s in grid])
        if bar is not None:
            bar.update(1)
    del bench
    return np.array(kls), np.array(mse), np.array(rate), tensors


def measure_sensitivity(model_path, text_paths=PROBE_TEXTS, *, bits: float = 2.0, probe_step: float = PROBE_STEP,
                        n_context: int = 1000, n_eval: int = 256, progress: bool = True) -> Sensitivity:
    """Probe every K and V tensor of the model on each text (see the module doc); minutes per text."""
    from tqdm import tqdm

    from .kv_profile import load_or_build_profile

    missing = [str(t) for t in text_paths if not Path(t).is_file()]
    if missing:
        raise FileNotFoundError(f"calibration texts not found: {', '.join(missing)} (the default ones come with "
                                "Debian's base-files and fortunes packages: apt-get install fortunes)")
    profile = load_or_build_profile(model_path)
    profile.step_weights = None  # probe around uniform steps
    bar = tqdm(total=len(profile.analysis) * len(text_paths), desc="probing KV tensors", unit="probe",
               disable=not progress)
    probe_kl, distortion, rate, fits = [], [], [], []
    with bar:
        for text in text_paths:
            kl, mse, text_rate, tensors = _probe_text(model_path, text, profile, bits, probe_step, n_context,
                                                      n_eval, bar)
            floor = FLOOR_SHARE * float(np.quantile(kl, FLOOR_QUANTILE))
            a = np.maximum(kl - floor, 1e-9) / np.maximum(mse[:, -1], 1e-30)
            logger.info("%s: KL floor %.5f, probe KL %.5f..%.5f", text, floor, kl.min(), kl.max())
            probe_kl.append(kl)
            fits.append(a)
            distortion.append(a[:, None] * mse[:, :-1])
            rate.append(text_rate)
    return Sensitivity(names=[t.name for t in tensors], kinds=[t.kind for t in tensors],
                       layers=[t.layer for t in tensors], sensitivity=np.mean(fits, axis=0),
                       distortion=np.mean(distortion, axis=0), rate=np.mean(rate, axis=0), texts=list(text_paths),
                       probe_kl=np.array(probe_kl))


def allocate(sens: Sensitivity, shrink: float = SHRINK) -> dict:
    """Step multipliers ``{"k": [per layer], "v": [per layer]}`` (geometric mean 1) minimising the predicted
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
    n_layer = max(sens.layers) + 1
    weights = {"k": [1.0] * n_layer, "v": [1.0] * n_layer}
    for kind, layer, lw in zip(sens.kinds, sens.layers, log_w):
        weights[kind][layer] = round(float(2.0 ** lw), 4)
    return weights


def weights_path(fingerprint: str) -> Path:
    from .kv_profile import profile_dir

    return profile_dir() / f"{fingerprint}.weights.json"


def _shipped_path(fingerprint: str) -> Path:
    return Path(__file__).parent / "data" / "kv_weights" / f"{fingerprint}.json"


def save_weights(fingerprint: str, weights: dict, meta: dict | None = None, path=None) -> Path:
    """Write the weights of a model (atomically) where ``load_weights`` finds them first."""
    path = Path(path) if path else weights_path(fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(meta or {}, version=WEIGHTS_VERSION, model_fingerprint=fingerprint, weights=weights)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
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
