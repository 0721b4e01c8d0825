"""``seqkv calibrate``: measure a model's per-head KV sensitivity and write the lossy tier's step weights."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..models import MODEL_HELP
from ..textdata import BUNDLED


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="measure per-head KV sensitivity; write the lossy tier's step weights")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--texts", help="comma list of calibration texts (default: calibrate.weights.PROBE_TEXTS)")
    p.add_argument("--probe-step", type=float, default=None, help="probe step, times the 2-bit step (default 8)")
    p.add_argument("--shrink", type=float, default=None, help="share of the fitted log-weights kept (default 0.5)")
    p.add_argument("--n-context", type=int, default=1000)
    p.add_argument("--n-eval", type=int, default=None, help="teacher-forced tokens per probe (default 128)")
    p.add_argument("--per-head", action="store_true",
                   help="probe every head on its own (n_heads times the probes) instead of every tensor")
    p.add_argument("--sensitivity", metavar="FILE",
                   help="reuse the per-head sensitivities of a weights file written before (no probes, seconds; "
                        "--probe-step and --n-eval do not apply): re-derive the weights for the current coder")
    p.add_argument("--out", help="write here instead of $SEQKV_HOME/kv_profiles/<fingerprint>.weights.json")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args) -> int:
    from ..calibrate import weights as kv_weights
    from ..calibrate.profile import load_or_build_profile
    from ..fingerprint import model_fingerprint
    from . import _model_path

    model = _model_path(args)
    texts = args.texts.split(",") if args.texts else list(kv_weights.PROBE_TEXTS)
    probe = args.probe_step or kv_weights.PROBE_STEP
    shrink = kv_weights.SHRINK if args.shrink is None else args.shrink
    if args.sensitivity:
        return _regrid(args, model, texts, shrink)
    t0 = time.perf_counter()
    before = load_or_build_profile(model).kl_table  # the rate-quality table with the weights in force until now
    n_eval = args.n_eval or kv_weights.N_EVAL
    sens = kv_weights.measure_sensitivity(model, texts, probe_step=probe, n_context=args.n_context,
                                          n_eval=n_eval, per_head=args.per_head)
    weights = kv_weights.allocate(sens, shrink=shrink)
    unit = "head" if args.per_head else "tensor"
    print(f"probe KL per head (its {unit} coded at {probe:g}x its 2-bit step, all else exact), "
          f"sensitivity a (KL per unit MSE), step weight")
    print("head      " + "  ".join(f"{Path(t).name[:10]:>10s}" for t in texts) + "           a   weight")
    for i, (name, kind, layer, head) in enumerate(zip(sens.names, sens.kinds, sens.layers, sens.heads)):
        kls = "  ".join(f"{kl:10.5f}" for kl in sens.probe_kl[:, i])
        print(f"{name:9s} {kls}  {sens.sensitivity[i]:10.3g}  {weights[kind][layer][head]:7.3f}")
    centre = int(np.argmin(np.abs(kv_weights.GRID_OCTAVES)))
    print(f"predicted excess KL at the uniform 2-bit steps: {sens.distortion[:, centre].sum():.4f}")
    meta = {"texts": [Path(t).name if Path(t).parent == BUNDLED else t for t in texts], "probe_step": probe,
            "shrink": shrink, "n_context": args.n_context, "n_eval": n_eval, "probes": unit, "sensitivity": dict(zip(sens.names, map(float, sens.sensitivity)))}
    path = kv_weights.save_weights(model_fingerprint(model), weights, meta, args.out)
    print(f"step weights written to {path}")
    if args.out is None:
        _report_gain(model, before)
    print(f"seqkv calibrate: {time.perf_counter() - t0:.0f} s")
    return 0


def _report_gain(model, before) -> None:
    """Measure the rate-quality table with the new weights and print what they gain over the ones before."""
    from ..calibrate.profile import load_or_build_profile
    from ..codecs.kv_lossy.codec import POOR_KL

    after = load_or_build_profile(model).kl_table
    if before is None or after is None:
        return
    print(f"rate-quality table (calibrate.kl_table), weights before -> after: at max_kl={POOR_KL:g} "
          f"{before.bits_for(POOR_KL):.2f} -> {after.bits_for(POOR_KL):.2f} bits per value; at 2 bits per value "
          f"expected KL {before.kl_at(before.scale_for_bits(2.0)):.4f} -> {after.kl_at(after.scale_for_bits(2.0)):.4f}")


def _regrid(args, model, texts, shrink: float) -> int:
    """``--sensitivity FILE``: the weights from stored sensitivities and the current coder's grids."""
    import json

    from ..calibrate import weights as kv_weights
    from ..errors import CorruptDataError
    from ..fingerprint import model_fingerprint

    fingerprint = model_fingerprint(model)
    try:
        source = json.loads(Path(args.sensitivity).read_text())
        sensitivity = {name: float(a) for name, a in source["sensitivity"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptDataError(f"seqkv calibrate --sensitivity {args.sensitivity}: not a weights file with "
                               f"per-head sensitivities ({exc})") from exc
    if source.get("model_fingerprint") != fingerprint:
        raise CorruptDataError(f"seqkv calibrate --sensitivity {args.sensitivity}: measured on model "
                               f"{source.get('model_fingerprint')}, not {fingerprint}")
    sens = kv_weights.regrid(model, sensitivity, texts, n_context=args.n_context)
    weights = kv_weights.allocate(sens, shrink=shrink)
    meta = {k: source[k] for k in ("texts", "probe_step", "n_context", "n_eval") if k in source}
    meta.update(shrink=shrink, sensitivity=sensitivity, grid_texts=texts)
    path = kv_weights.save_weights(fingerprint, weights, meta, args.out)
    centre = int(np.argmin(np.abs(kv_weights.GRID_OCTAVES)))
    print(f"predicted excess KL at the uniform 2-bit steps: {sens.distortion[:, centre].sum():.4f}")
    print(f"step weights written to {path}")
    return 0
