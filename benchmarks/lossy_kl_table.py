"""Measure the ``max_kl`` table of the lossy KV codec: mean KL at fixed step scales, averaged over texts.

    python benchmarks/lossy_kl_table.py [--model M] [--scales 0.12,0.2,...] [--texts T1,T2,...] [--version 4]

For each text: one 1,000-token session of the default model, coded at each step scale (format ``--version``,
model profile and its step weights on), restored and scored on the next 256 tokens (``seqkv_edge.calibrate.quality``);
prints the bits and KL per scale and text, then ``_KL_TABLE_PROFILE`` as ``codecs/kv_lossy.py`` holds it (the
mean KL of the texts at each scale).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqkv_edge.calibrate.profile import load_or_build_profile  # noqa: E402
from seqkv_edge.calibrate.quality import QualityBench  # noqa: E402
from seqkv_edge.codecs.kv_lossy import codec as kv_lossy  # noqa: E402
from seqkv_edge.codecs.kv_lossy.codec import FORMAT_VERSION, KVLossyCodec  # noqa: E402
from seqkv_edge.models import default_model_path  # noqa: E402

SCALES = (0.12, 0.2, 0.3, 0.45, 0.65, 0.9, 1.3)
TEXTS = ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/MPL-2.0", "/usr/share/games/fortunes/people")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--scales", default=",".join(map(str, SCALES)))
    p.add_argument("--texts", default=",".join(TEXTS))
    p.add_argument("--version", type=int, default=FORMAT_VERSION)
    args = p.parse_args(argv)
    model = args.model or default_model_path()
    profile = load_or_build_profile(model)
    scales = [float(s) for s in args.scales.split(",")]
    kls = {s: [] for s in scales}
    print(f"lossy KV format {args.version}, model profile and step weights on; mean KL(exact || restored)")
    print(f"{'text':12s} {'scale':>6s} {'bits':>6s} {'KL mean':>8s} {'top-1':>6s}")
    for text in args.texts.split(","):
        bench = QualityBench(model, text, n_context=1000, n_eval=256, n_greedy=0)
        n_values = sum(t.n_cells * t.n_channels for t in bench.state.tensors())
        for scale in scales:
            # the codec's max_kl path codes at scale_for_kl(max_kl): pinned here to the scale being measured
            with mock.patch.object(kv_lossy, "scale_for_kl", lambda *_a, _s=scale, **_k: _s):
                blob, coded = bench.lossy_blob(KVLossyCodec(max_kl=1.0, version=args.version), profile=profile)
            r = bench.evaluate(blob)
            kls[scale].append(r["kl_mean"])
            print(f"{Path(text).name:12s} {scale:6.3g} {8 * coded / n_values:6.3f} {r['kl_mean']:8.4f} "
                  f"{100 * r['top1_agreement']:5.1f}%", flush=True)
    table = ", ".join(f"({s:g}, {np.mean(kls[s]):.4f})" for s in scales)
    print(f"_KL_TABLE_PROFILE = ({table})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
