"""``SeqKV``: how a ``seqkv_edge.Llama`` compresses and stores its sessions."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Optional

KV_TIERS = ("lossless", "lossy", "none")
TOKEN_CODECS = ("portable", "hybrid", "model")
DEVICES = ("auto", "cpu", "cuda", "metal")
# with the model's KV profile the lossy tier aims at a quality (the model's measured rate-quality table picks the
# rate: some models need twice the bits of others); without it, at 3 bits (README)
DEFAULT_LOSSY_MAX_KL, DEFAULT_LOSSY_BITS_WITHOUT_PROFILE = 0.01, 3.0


@dataclass(frozen=True)
class SeqKV:
    """Compression settings for ``seqkv_edge.Llama(kv_compressor=SeqKV(...))``.

    Args:
        kv: the KV snapshot: ``"lossless"`` (bit-exact, entropy coded, restores without recompute),
            ``"lossy"`` (quantized and entropy coded at ``bits`` per value or at the rate that keeps the
            next-token KL under ``max_kl``; restores without recompute) or ``"none"`` (tokens only: the
            smallest files, restored by recomputing the KV).
        bits: lossy target instead of ``max_kl``: average stored bits per KV value, side information included
            (default without the model profile: 3). A rate that leaves the model above KL 0.01 says so in a warning.
        max_kl: lossy target: mean next-token KL divergence in nats per token (default 0.01 with the model
            profile), through the model's rate-quality table measured on first use (``calibrate.kl_table``;
            approximate: texts differ, within ~25% on the known models).
        model_profile: lossy only (on by default): code K and V in per-head bases and inter-layer predictions
            derived once per model (calibration prefills and a rate-quality table, 40-50 s on first use, cached in
            ``$SEQKV_HOME/kv_profiles``): several times lower KL at the same rate; with it the encoder also uses
            the model's per-head step weights where known (shipped for the default model, ``seqkv calibrate``
            for others). Each session file keeps a copy of the profile beside it (``.seqkv_profiles/``), so
            its folder restores on other machines.
        tokens: how tokens-only sessions code their tokens: ``"portable"`` (a context model, no LLM
            needed to decode; restore by batched prefill), ``"hybrid"`` (records the eval schedule and
            codes generated tokens with the logits captured while generating; restore replays the
            schedule bit-exactly) or ``"model"`` (a one-token pass at save codes every token with the
            model; smallest; restore by one-token steps). Snapshots always code tokens portably.
        portable_fallback: with ``hybrid``/``model`` tokens, also keep a portable copy so another
            llama.cpp build (which cannot reproduce the logits) can still restore by prefill.
        n_threads: threads coding KV tensors in parallel (default: all cores).
        device: where lossy snapshots are entropy-coded: ``"auto"`` (an NVIDIA GPU for states over 256 MB when
            CUDA is usable, else the CPU), ``"cpu"``, ``"cuda"`` or ``"metal"`` (wgpu: Metal on macOS, Vulkan
            elsewhere); the last two are an error when unavailable. A save a GPU codes is written in lossy format 6
            (its segment coder; with CUDA, llama.cpp's state is read into page-locked memory), any other in the
            default format; every machine decodes both, and the device never changes the bytes of a format.
        store: a session store (a directory, or ``redis://host:port/db``): sessions saved by name are
            deduplicated there, and the Llama's completion cache restores the longest stored prefix. The store
            keeps KV losslessly whatever ``kv`` says (shared prefixes must restore bit-exactly for every session
            that shares them); ``kv`` applies to sessions saved to files.
        store_budget_bytes: evict KV snapshots beyond this many stored bytes (tokens are always kept).

    >>> SeqKV()
    SeqKV(kv='lossless', tokens='portable', portable_fallback=False, bits=None, max_kl=None, model_profile=False, n_threads=None, device='auto', store=None, store_budget_bytes=None)
    >>> SeqKV(kv="lossy").max_kl, SeqKV(kv="lossy").model_profile, SeqKV(kv="lossy", model_profile=False).bits
    (0.01, True, 3.0)
    >>> SeqKV(kv="fast")
    Traceback (most recent call last):
    ...
    ValueError: SeqKV(kv='fast'): choose one of ('lossless', 'lossy', 'none')
    """

    kv: str = "lossless"
    tokens: str = "portable"
    portable_fallback: bool = False
    bits: Optional[float] = None
    max_kl: Optional[float] = None
    model_profile: Optional[bool] = None
    n_threads: Optional[int] = None
    device: str = "auto"
    store: Optional[str] = None
    store_budget_bytes: Optional[int] = None

    def __post_init__(self):
        if self.store is not None:
            object.__setattr__(self, "store", os.fspath(self.store))
        if self.kv not in KV_TIERS:
            raise ValueError(f"SeqKV(kv={self.kv!r}): choose one of {KV_TIERS}")
        if self.model_profile is None:
            object.__setattr__(self, "model_profile", self.kv == "lossy")
        if self.kv == "lossy" and self.bits is None and self.max_kl is None:
            if self.model_profile:
                object.__setattr__(self, "max_kl", DEFAULT_LOSSY_MAX_KL)
            else:
                object.__setattr__(self, "bits", DEFAULT_LOSSY_BITS_WITHOUT_PROFILE)
        if self.kv != "lossy" and (self.bits is not None or self.max_kl is not None):
            raise ValueError(f"SeqKV(bits=..., max_kl=...) apply to kv='lossy', not kv={self.kv!r}")
        if self.model_profile and self.kv != "lossy":
            raise ValueError("SeqKV(model_profile=True) applies to kv='lossy'")
        if self.bits is not None and self.max_kl is not None:
            raise ValueError("SeqKV: give bits or max_kl, not both")
        if self.tokens not in TOKEN_CODECS:
            raise ValueError(f"SeqKV(tokens={self.tokens!r}): choose one of {TOKEN_CODECS}")
        if self.n_threads is not None and self.n_threads < 1:
            raise ValueError(f"SeqKV(n_threads={self.n_threads}): must be >= 1")
        if self.device not in DEVICES:
            raise ValueError(f"SeqKV(device={self.device!r}): choose one of {DEVICES}")

    def save(self, llm, target, progress=None):
        """Save ``llm``'s session to ``target`` with these settings (the ``kv_compressor`` protocol): a file path,
        or, with ``store``, a plain name (``sessions.core``)."""
        from .sessions.core import save

        return save(llm, target, self, progress)

    def load(self, llm, target, progress=None):
        """Restore a session file or store name into ``llm`` (the ``kv_compressor`` protocol)."""
        from .sessions.core import load

        return load(llm, target, self, progress)

    @property
    def threads(self) -> int:
        return self.n_threads or os.cpu_count() or 1

    def get_config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> "SeqKV":
        return cls(**config)
