"""``seqkv quality``: save a session lossily, restore it, measure the damage (``seqkv_edge.calibrate.quality``), print JSON."""
from __future__ import annotations

import argparse
import json

from ..models import MODEL_HELP


def main(argv=None) -> int:
    """``seqkv quality --model M --text T (--bits B | --max-kl K)``: print the figures as JSON."""
    p = argparse.ArgumentParser(prog="seqkv quality", description=run_quality.__doc__.splitlines()[0])
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--text", help="English plain text (default: the GPL-3 text shipped by Debian)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--bits", type=float, help="target average bits per KV value (all side info counted)")
    rate.add_argument("--max-kl", type=float, help="target mean KL in nats/token; the encoder picks the rate")
    p.add_argument("--n-context", type=int, default=1000)
    p.add_argument("--n-eval", type=int, default=256)
    p.add_argument("--n-greedy", type=int, default=128)
    p.add_argument("--no-flash-attn", action="store_true")
    p.add_argument("--profile", action="store_true", help="code with the model's KV profile (format 2 bases)")
    args = p.parse_args(argv)
    from . import _model_path

    model = _model_path(args)
    bits = args.bits if args.bits is not None or args.max_kl is not None else 2.0
    result = run_quality(model, args.text, bits=bits, max_kl=args.max_kl, n_context=args.n_context,
                         n_eval=args.n_eval, n_greedy=args.n_greedy, flash_attn=not args.no_flash_attn,
                         profile=args.profile)
    print(json.dumps(result, indent=2))
    return 0


def run_quality(model_path, text_path=None, bits: float | None = None, max_kl: float | None = None,
                n_context: int = 1000, n_eval: int = 256, n_greedy: int = 128, flash_attn: bool = True,
                profile: bool = False) -> dict:
    """Save a session lossily (``bits`` per value or ``max_kl``), restore it, and measure the damage.

    ``profile``: code with the model's KV profile (``seqkv_edge.calibrate.profile``; built and cached in
    ``$SEQKV_HOME/kv_profiles`` on first use).

    Returns the figures of :func:`compare` plus ``bits_per_value`` (all side information counted),
    ``coded_bytes``, ``raw_kv_bytes`` and the setup (text, token counts, flash_attn).
    """
    from ..calibrate.quality import QualityBench
    from ..codecs.kv_lossy.codec import KVLossyCodec

    bench = QualityBench(model_path, text_path, n_context=n_context, n_eval=n_eval, n_greedy=n_greedy,
                         flash_attn=flash_attn)
    codec = KVLossyCodec(bits=bits, max_kl=max_kl)
    kv_profile = None
    if profile:
        from ..calibrate.profile import load_or_build_profile

        kv_profile = load_or_build_profile(model_path)
    blob, coded = bench.lossy_blob(codec, profile=kv_profile)
    n_values = sum(t.n_cells * t.n_channels for t in bench.state.tensors())
    result = bench.evaluate(blob)
    result.update(bits_per_value=8.0 * coded / n_values, coded_bytes=coded, raw_kv_bytes=2 * n_values,
                  codec=codec.get_config(), text=bench.text_name, n_context=n_context, flash_attn=flash_attn,
                  profile=kv_profile.digest.hex() if kv_profile is not None else None)
    return result
