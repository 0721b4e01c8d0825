"""Quality harness for lossy KV snapshots: how much does a restored cache change the model's predictions?

Protocol (one model, one context setting on both sides, so the only difference is the KV cache):

1. prefill ``n_context`` tokens of a text in one batched schedule and read the sequence state;
2. *original*: restore that state losslessly (its own bytes) into the cleared context;
   *restored*: encode it lossily, decode, restore;
3. on each side teacher-force the true continuation (``n_eval`` tokens, batched, same schedule) and keep the
   next-token distributions; then a greedy continuation of ``n_greedy`` tokens (one-token steps);
4. report per-token KL(original ‖ restored) (mean, p99, max), top-1 agreement, perplexity of the true
   continuation on both sides, and the greedy agreement (positionwise and the common prefix).

The same eval schedule on both sides makes the lossless restore reproduce the original logits bit for bit
(DESIGN.md §3), so KL is exactly 0 for the lossless tier and every nat measured is the codec's.

    >>> bench = QualityBench(model_path, "/usr/share/common-licenses/GPL-3")                  # doctest: +SKIP
    >>> bench.evaluate(bench.lossy_blob(KVLossyCodec(bits=2.0))[0])["kl_mean"]               # doctest: +SKIP
    0.04...

``seqkv quality`` (``seqkv_edge.cli.quality.run_quality``) runs it once and prints the figures.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from ..state import llama_api
from ..state.blob import parse_seq_state, read_seq_state
from ..state.swa import write_state

logger = logging.getLogger(__name__)

CACHE_TYPES = {"f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2}


class Evaluator:
    """One llama.cpp context driven with explicit batches; logits are read for the rows asked for only."""

    def __init__(self, model_path: str, n_ctx: int, *, flash_attn: bool = True, cache_type: str = "f16",
                 n_batch: int = 512, n_threads: int = 2, llm=None):
        from ..hardware import load_plain_llama as Llama

        self.llm = llm or Llama(model_path=str(model_path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                                n_threads=n_threads, n_threads_batch=n_threads, flash_attn=flash_attn,
                                type_k=CACHE_TYPES[cache_type], type_v=CACHE_TYPES[cache_type], verbose=False)
        self.n_batch, self.n_vocab = n_batch, self.llm.n_vocab()

    def tokenize(self, text: str) -> np.ndarray:
        return np.asarray(self.llm.tokenize(text.encode("utf-8")), dtype=np.int32)

    def clear(self) -> None:
        from llama_cpp import llama_cpp as lib

        lib.llama_memory_clear(lib.llama_get_memory(self.llm.ctx), True)
        self.llm.n_tokens = 0

    def decode(self, tokens, n_past: int, want_logits: bool) -> np.ndarray | None:
        """Evaluate ``tokens`` at positions n_past.. in n_batch chunks; log-probs of every row if asked
        (float32 [len(tokens), n_vocab]), else only the last row's."""
        from llama_cpp import llama_cpp as lib

        rows = []
        with llama_api.batch(self.n_batch) as batch:
            for start in range(0, len(tokens), self.n_batch):
                chunk = [int(t) for t in tokens[start:start + self.n_batch]]
                batch.set_batch(chunk, n_past=n_past + start, logits_all=want_logits)
                if lib.llama_decode(self.llm.ctx, batch.batch) != 0:
                    raise RuntimeError(f"llama_decode failed at position {n_past + start}")
                n_out = len(chunk) if want_logits else 1
                ptr = lib.llama_get_logits(self.llm.ctx)
                logits = np.ctypeslib.as_array(ptr, shape=(n_out * self.n_vocab,)).reshape(n_out, self.n_vocab)
                rows.append(_log_softmax(logits))
        self.llm.n_tokens = n_past + len(tokens)
        return np.concatenate(rows) if want_logits else rows[-1]

    def greedy(self, first_token: int, n_past: int, n: int) -> np.ndarray:
        """Feed ``first_token`` at n_past, then take the argmax n times (one-token steps)."""
        out, token = [], int(first_token)
        for i in range(n):
            token = int(np.argmax(self.decode([token], n_past + i, want_logits=False)[-1]))
            out.append(token)
        return np.asarray(out, dtype=np.int32)

    def session(self, tokens) -> bytes:
        """Prefill ``tokens`` into a cleared context and return the sequence state blob."""
        self.clear()
        self.decode(tokens, 0, want_logits=False)
        return bytes(read_seq_state(self.llm.ctx))

    def restore(self, blob) -> None:
        self.clear()
        write_state(self.llm, blob)

    def continuation(self, n_past: int, cont_tokens, n_greedy: int) -> dict:
        """Teacher-forced log-probs of ``cont_tokens`` and a greedy run, from the state in the context."""
        logprobs = self.decode(cont_tokens, n_past, want_logits=True)
        greedy = np.zeros(0, np.int32)
        if n_greedy:
            from llama_cpp import llama_cpp as lib

            lib.llama_memory_seq_rm(lib.llama_get_memory(self.llm.ctx), 0, n_past, -1)
            greedy = self.greedy(cont_tokens[0], n_past, n_greedy)
        return {"logprobs": logprobs, "greedy": greedy}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float32, copy=True)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


def compare(reference: dict, restored: dict, cont_tokens) -> dict:
    """KL(reference ‖ restored) per teacher-forced token and agreement figures (see the module doc)."""
    lp, lq = reference["logprobs"][:-1], restored["logprobs"][:-1]  # row i predicts cont_tokens[i + 1]
    kl = (np.exp(lp) * (lp - lq)).sum(axis=1, dtype=np.float64).clip(min=0.0)
    target = np.asarray(cont_tokens[1:], dtype=np.int64)
    nll_p = -lp[np.arange(len(target)), target].astype(np.float64)
    nll_q = -lq[np.arange(len(target)), target].astype(np.float64)
    g_ref, g_out = reference["greedy"], restored["greedy"]
    same = g_ref == g_out
    return {
        "n_eval": int(len(kl)),
        "kl_mean": float(kl.mean()), "kl_p99": float(np.quantile(kl, 0.99)), "kl_max": float(kl.max()),
        "top1_agreement": float((lp.argmax(1) == lq.argmax(1)).mean()),
        "ppl_original": float(np.exp(nll_p.mean())), "ppl_restored": float(np.exp(nll_q.mean())),
        "ppl_change": float(np.exp(nll_q.mean()) / np.exp(nll_p.mean()) - 1.0),
        "n_greedy": int(len(g_ref)),
        "greedy_agreement": float(same.mean()) if len(same) else 1.0,
        "greedy_common_prefix": int(np.argmin(same)) if not same.all() else int(len(same)),
    }


class QualityBench:
    """Build the session and the lossless reference once, then score any number of restored states."""

    def __init__(self, model_path: str, text_path: str | None = None, *, n_context: int = 1000, n_eval: int = 256,
                 n_greedy: int = 128, flash_attn: bool = True, n_threads: int = 2):
        from ..textdata import read_text

        self.model_path, self.flash_attn, self.n_threads = str(model_path), flash_attn, n_threads
        self.n_context, self.n_eval, self.n_greedy = n_context, n_eval, n_greedy
        self.n_ctx = n_context + n_eval + n_greedy + 16
        self.text, self.text_name = read_text(text_path)
        self.ev = Evaluator(self.model_path, self.n_ctx, flash_attn=flash_attn, n_threads=n_threads)
        tokens = self.ev.tokenize(self.text)
        if len(tokens) < n_context + n_eval:
            raise ValueError(f"{self.text_name} has {len(tokens)} tokens; the harness needs {n_context + n_eval}")
        self.context, self.cont = tokens[:n_context], tokens[n_context:n_context + n_eval]
        t0 = time.perf_counter()
        self.blob = self.ev.session(self.context)
        self.state = parse_seq_state(self.blob, model=self.ev.llm)
        self.reference = self.score_blob(self.blob)
        logger.info("quality bench ready: %d context tokens of %s in %.1f s", n_context, self.text_name,
                    time.perf_counter() - t0)

    def score_blob(self, blob) -> dict:
        self.ev.restore(blob)
        return self.ev.continuation(self.n_context, self.cont, self.n_greedy)

    def evaluate(self, blob) -> dict:
        """Restore ``blob`` (same layout as ``self.blob``) and compare with the lossless reference."""
        return compare(self.reference, self.score_blob(blob), self.cont)

    def evaluate_cache_type(self, cache_type: str) -> dict:
        """llama.cpp's own quantized cache: prefill the same tokens in a context of that cache type."""
        ev = Evaluator(self.model_path, self.n_ctx, flash_attn=self.flash_attn, cache_type=cache_type,
                       n_threads=self.n_threads)
        ev.session(self.context)
        out = ev.continuation(self.n_context, self.cont, self.n_greedy)
        del ev
        return compare(self.reference, out, self.cont)

    def lossy_blob(self, codec, profile=None) -> tuple[bytes, int]:
        """Encode the bench's state with a KVLossyCodec (and a ``profile.KVProfile`` for format 2 bases),
        decode into a fresh skeleton: (blob, coded bytes)."""
        from ..state.rope import rope_params
        from ..state.blob import skeleton_layout

        rope = rope_params(self.ev.llm)
        payloads = codec.encode_state(self.state, rope, profile=profile)
        out, tensors = skeleton_layout(self.state.skeleton(), expected_size=len(self.blob))
        positions = [st.positions for sec in self.state.sections for st in sec.streams]
        codec.decode_state(payloads, tensors, positions, rope, profile=profile)
        return bytes(out), sum(map(len, payloads))
