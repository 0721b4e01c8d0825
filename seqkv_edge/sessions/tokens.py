"""Token-only sessions (``SeqKV(kv="none")``): a session stored as its tokens, restored by recompute.

Three tiers, from portable to smallest:

- ``portable``: tokens coded by a deterministic context model (no LLM needed to decode); restore by
  batched prefill (fast, numerically equivalent KV).
- ``hybrid``: the recorded eval schedule; each call's first token coded with the model's logits
  captured during generation, the rest portable. Restore replays the schedule: bit-identical KV.
- ``model``: a one-token-step pass at save gives every token's logits (smallest files); restore
  decodes with the same one-token steps.

The header is compact binary (the file costs the code length plus a few dozen bytes)::

    u8 tier | 16 B model fingerprint | 8 B build hash | varint n_tokens | varint n_vocab
    | varint first token + 1 (model tier; 0 otherwise)
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from ..codecs.tokens_model import ModelTokenDecoder, ModelTokenEncoder
from ..codecs.tokens_portable import TokensPortableCodec
from ..codecs.varint import read_varint, write_varint
from ..container.session_file import Container, Kind, write_container
from ..errors import CorruptDataError, ModelMismatchError, ScheduleUnavailableError, SeqKVError
from ..fingerprint import build_info, model_fingerprint
from ..state import llama_api
from .base import SessionInfo
from .prefill import Progress, prefill, report
from .schedule import MAX_CALLS_PER_CELL, Schedule, replay
from .timing import Clock

log = logging.getLogger(__name__)

TIERS = {"portable": 1, "hybrid": 2, "model": 3}
TIER_NAMES = {code: name for name, code in TIERS.items()}


def build_hash() -> bytes:
    """8 bytes naming the llama.cpp build (version and CPU features): model-coded tokens need the same one."""
    return hashlib.sha256(json.dumps(build_info(), sort_keys=True).encode()).digest()[:8]


def encode_header(tier: str, fingerprint: str, n_tokens: int, n_vocab: int, first_token: int = -1) -> bytes:
    return (bytes([TIERS[tier]]) + bytes.fromhex(fingerprint) + build_hash() + write_varint(n_tokens)
            + write_varint(n_vocab) + write_varint(first_token + 1))


def decode_header(buf, source: str) -> dict:
    buf = memoryview(buf)
    if len(buf) < 25 or buf[0] not in TIER_NAMES:
        raise CorruptDataError(f"{source}: damaged session header")
    n_tokens, pos = read_varint(buf, 25, source)
    n_vocab, pos = read_varint(buf, pos, source)
    first, pos = read_varint(buf, pos, source)
    if pos != len(buf):
        raise CorruptDataError(f"{source}: session header has trailing bytes")
    return {"tier": TIER_NAMES[buf[0]], "fingerprint": bytes(buf[1:17]).hex(), "build": bytes(buf[17:25]),
            "n_tokens": n_tokens, "n_vocab": n_vocab, "first_token": first - 1}


def save(llm, path, config, progress: Progress = None, ideal: Optional[list] = None):
    """Write ``llm``'s session as tokens only, in the tier ``config.tokens``.

    ``ideal`` (a list) collects each token's -log2 p in the model tier's pass (benchmarks).
    """
    clock = Clock()
    tokens = np.ascontiguousarray(llm.input_ids[: llm.n_tokens], dtype=np.int32)
    if len(tokens) == 0:
        raise SeqKVError("saving a session: the context holds no tokens yet; evaluate or generate first")
    n_vocab, tier = llm.n_vocab(), config.tokens
    portable = TokensPortableCodec(n_vocab=n_vocab)
    first_token, sections = -1, []
    if tier == "portable":
        sections.append((Kind.TOKENS, portable.encode(tokens)))
    elif tier == "hybrid":
        recorder = getattr(llm, "schedule_recorder", None)
        if recorder is None:
            raise ScheduleUnavailableError("tokens='hybrid' records the eval schedule: use seqkv_edge.Llama(kv_compressor=SeqKV("
                             "kv='none', tokens='hybrid')) from the start of the session")
        recorder.sync(llm.n_tokens)
        if not recorder.valid:
            raise ScheduleUnavailableError("saving a hybrid session: the context was changed outside eval (e.g. a KV snapshot "
                             "was loaded), so its schedule cannot be replayed; save it with tokens='portable'")
        sections += [(Kind.SCHEDULE_RUNS, recorder.schedule.encode()), (Kind.TOKENS, portable.encode(recorder.plain_tokens())),
                     (Kind.MODEL_TOKENS, recorder.model.finish())]
    else:
        first_token = int(tokens[0])
        sections.append((Kind.MODEL_TOKENS, one_token_pass(llm, tokens, progress, ideal)))
    if config.portable_fallback and tier != "portable":
        sections.append((Kind.FALLBACK, portable.encode(tokens)))
    clock.lap("encode")
    header = encode_header(tier, model_fingerprint(llm.model_path), len(tokens), n_vocab, first_token)
    file_bytes = write_container(path, header, sections)
    clock.lap("write")
    return SessionInfo(str(path), len(tokens), _raw_state_bytes(llm), file_bytes, clock.seconds)


def _raw_state_bytes(llm) -> int:
    return llama_api.state_size(llm)


def one_token_pass(llm, tokens: np.ndarray, progress: Progress = None, ideal: Optional[list] = None) -> bytes:
    """Model-code ``tokens`` with logits from one-token steps in a scratch context on the same model.

    With ``ideal`` (a list), each token's ideal code length -log2 p is appended to it (benchmarks).
    """
    from ..codecs.tokens_model import ideal_bits

    encoder = ModelTokenEncoder(llm.n_vocab())
    with llama_api.scratch_context(llm) as ctx, llama_api.batch(1) as one:
        for position, token in enumerate(tokens[:-1].tolist()):
            one.set_batch([token], n_past=position, logits_all=False)
            ctx.decode(one)
            encoder.add(ctx.get_logits(), int(tokens[position + 1]))
            if ideal is not None:
                row = np.ctypeslib.as_array(ctx.get_logits(), shape=(llm.n_vocab(),))
                ideal.append(ideal_bits(row, int(tokens[position + 1])))
            report(progress, position + 1, len(tokens))
    return encoder.finish()


def check(container: Container, llm, source: str) -> dict:
    header = decode_header(container.header, source)
    live = model_fingerprint(llm.model_path)
    if header["fingerprint"] != live:
        raise ModelMismatchError(f"{source} was saved with another model (fingerprint {header['fingerprint']}); "
                                 f"this Llama runs {llm.model_path} (fingerprint {live})")
    if header["n_tokens"] > llm.n_ctx():
        raise ModelMismatchError(f"{source} holds {header['n_tokens']} tokens but this context has n_ctx={llm.n_ctx()}")
    return header


def load_file(llm, path, container: Container, progress: Progress = None) -> SessionInfo:
    """Restore the tokens-only session file ``path`` (its ``container`` read) into ``llm`` by recomputing it; the
    caller rolls the context back on failure (``base.rollback_on_failure``)."""
    clock, source = Clock(), str(path)
    check(container, llm, source)
    clock.lap("check")
    llm.reset()
    how = load(llm, container, source, progress)
    clock.lap("replay")
    return SessionInfo(source, llm.n_tokens, _raw_state_bytes(llm), Path(path).stat().st_size, clock.seconds,
                       restored_by=how)


def load(llm, container: Container, source: str, progress: Progress = None) -> str:
    """Rebuild the context from tokens (``llm`` must be empty); returns how it was restored."""
    header = check(container, llm, source)
    tier, n_vocab = header["tier"], llm.n_vocab()
    portable = TokensPortableCodec(n_vocab=n_vocab)
    if tier != "portable" and header["build"] != build_hash():
        fallback = container.payloads(Kind.FALLBACK)
        if not fallback:
            raise ModelMismatchError(
                f"{source} holds {tier}-coded tokens from another llama.cpp build (version or CPU features differ): "
                "only the same build reproduces the logits. Save with SeqKV(portable_fallback=True) to move sessions "
                "between machines."
            )
        log.warning("%s: another llama.cpp build; restoring from the portable copy by batched prefill", source)
        tokens = portable.decode(fallback[0], max_tokens=header["n_tokens"])
        return _prefill(llm, tokens, header, source, progress, "prefill (fallback)")
    if tier == "portable":
        tokens = portable.decode(container.payload(Kind.TOKENS), max_tokens=header["n_tokens"])
        return _prefill(llm, tokens, header, source, progress, "prefill")
    if tier == "hybrid":
        schedule = read_schedule(container, max_calls=MAX_CALLS_PER_CELL * llm.n_ctx())
        n_plain = schedule.n_evaluated - len(schedule.sizes) + 1  # every call after the first has one model-coded token
        replay(llm, schedule, portable.decode(container.payload(Kind.TOKENS), max_tokens=n_plain),
               bytes(container.payload(Kind.MODEL_TOKENS)), progress)
        _check_count(llm, header, source)
        return "exact replay"
    _one_token_replay(llm, header, bytes(container.payload(Kind.MODEL_TOKENS)), progress)
    return "one-token replay"


def read_schedule(container: Container, max_calls: int | None = None) -> Schedule:
    """The hybrid schedule: run-length coded (format 2) or one entry per call (format 1)."""
    if container.payloads(Kind.SCHEDULE):
        return Schedule.decode(container.payload(Kind.SCHEDULE), runs=False, max_calls=max_calls)
    return Schedule.decode(container.payload(Kind.SCHEDULE_RUNS), max_calls=max_calls)


def _prefill(llm, tokens: np.ndarray, header: dict, source: str, progress: Progress, how: str) -> str:
    if len(tokens) != header["n_tokens"]:
        raise CorruptDataError(f"{source}: {len(tokens)} tokens decoded, the header says {header['n_tokens']}")
    prefill(llm, tokens, progress)
    return how


def _one_token_replay(llm, header: dict, stream: bytes, progress: Progress) -> None:
    decoder = ModelTokenDecoder(stream, llm.n_vocab())
    token, total = header["first_token"], header["n_tokens"]
    if not 0 <= token < llm.n_vocab():
        raise CorruptDataError(f"first token {token} is outside the vocabulary")
    for position in range(total):
        llm.eval([token])
        report(progress, position + 1, total)
        if position + 1 < total:
            token = decoder.next(llama_api.logits(llm))
    decoder.done()


def _check_count(llm, header: dict, source: str) -> None:
    if llm.n_tokens != header["n_tokens"]:
        raise CorruptDataError(f"{source}: replay gave {llm.n_tokens} tokens, the header says {header['n_tokens']}")
