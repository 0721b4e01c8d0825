"""``seqkv quality``: save a session lossily, restore it, measure the damage (``seqkv_edge.calibrate.quality``), print JSON."""
from __future__ import annotations

import argparse
import json

from ..calibrate.quality import run_quality
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
