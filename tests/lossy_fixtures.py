"""Decodes the frozen lossy KV fixtures (tests/fixtures/kv_lossy_v*.npz) to state bytes; also run as a script in
subprocesses with other BLAS kernels and thread counts: ``python lossy_fixtures.py`` prints ``name sha256`` lines."""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NAMES = ("kv_lossy_v1", "kv_lossy_v2", "kv_lossy_v3", "kv_lossy_v4", "kv_lossy_v4_profile3", "kv_lossy_v5",
         "kv_lossy_v6")
DIGESTS = FIXTURES / "kv_lossy_decoded_sha256.json"


def decode_fixture(name: str, codec=None) -> bytes:
    """The state bytes fixture ``name`` decodes to (its payloads into its skeleton, with its own KV profile) with
    ``codec`` (default ``KVLossyCodec(bits=2.0)``: decoding needs no settings)."""
    from seqkv_edge.codecs.kv_lossy.codec import KVLossyCodec
    from seqkv_edge.codecs.kv_lossy.profile import KVProfile
    from seqkv_edge.state.blob import skeleton_layout

    fx = np.load(FIXTURES / f"{name}.npz")
    rope = json.loads(str(fx["rope"]))
    payloads = [fx[f"payload_{i}"].tobytes() for i in range(int(fx["n_payloads"]))]
    profile = None
    if "profile" in fx.files:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "profile.npz"
            path.write_bytes(fx["profile"].tobytes())
            profile = KVProfile.load(path)
    out, tensors = skeleton_layout(fx["skeleton"].tobytes(), expected_size=len(fx["expected"]))
    (codec or KVLossyCodec(bits=2.0)).decode_state(payloads, tensors, [fx["positions"]], rope, profile=profile)
    return bytes(out)


def decoded_digests() -> dict[str, str]:
    return {name: hashlib.sha256(decode_fixture(name)).hexdigest() for name in NAMES}


if __name__ == "__main__":
    if sys.argv[1:] == ["--freeze"]:  # once, when a fixture is added
        DIGESTS.write_text(json.dumps(decoded_digests(), indent=1) + "\n")
    for name, digest in decoded_digests().items():
        print(name, digest)
