"""The eval schedule of a context: what was decoded, in which batches, and where it was cut back.

Replaying the same schedule (batch sizes, order, cuts) on the same build gives bit-identical KV
and logits (DESIGN.md §3). :class:`ScheduleRecorder` watches ``Llama.eval`` and records every call;
the first token of each call after the first is coded with the model's logits of the call before
it (the "hybrid" token tier: generated tokens cost about their surprisal), the other tokens go to
the portable codec. :func:`replay` rebuilds the context by repeating the calls exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field


import numpy as np

from ..codecs.tokens_model import ModelTokenDecoder, ModelTokenEncoder
from ..codecs.varint import read_varint, write_varint
from ..errors import CorruptDataError
from ..state import llama_api
from .prefill import Progress, report

NO_CUT = -1
# eval calls a replay may make per cell of the context: a session that cut back and regenerated its whole
# context 64 times; a schedule claiming more is damaged, refused before its runs are expanded
MAX_CALLS_PER_CELL = 64


@dataclass
class Schedule:
    """Eval calls in order: ``sizes[i]`` tokens, then the context cut back to ``cuts[i]`` (or not)."""

    sizes: list = field(default_factory=list)
    cuts: list = field(default_factory=list)

    def encode(self) -> bytes:
        """Run-length coded (section SCHEDULE_RUNS): ``count`` runs of ``(size, cut + 1, repeat)``."""
        runs: list[list[int]] = []
        for size, cut in zip(self.sizes, self.cuts):
            if runs and runs[-1][:2] == [size, cut + 1]:
                runs[-1][2] += 1
            else:
                runs.append([size, cut + 1, 1])
        return write_varint(len(runs)) + b"".join(b"".join(map(write_varint, run)) for run in runs)

    @classmethod
    def decode(cls, buf, runs: bool = True, max_calls: int | None = None) -> "Schedule":
        """Read a SCHEDULE_RUNS section, or with ``runs=False`` a version-1 SCHEDULE (one entry per call).

        A schedule of more than ``max_calls`` eval calls is refused before its runs are expanded.
        """
        buf = memoryview(buf)
        count, pos = read_varint(buf, 0, "schedule")
        if count > len(buf):  # a run takes at least 2 bytes
            raise CorruptDataError(f"schedule claims {count} runs in {len(buf)} bytes")
        read = []
        for _ in range(count):
            size, pos = read_varint(buf, pos, "schedule")
            cut, pos = read_varint(buf, pos, "schedule")
            repeat, pos = read_varint(buf, pos, "schedule") if runs else (1, pos)
            if size == 0 or repeat == 0 or repeat > len(buf) * 128:
                raise CorruptDataError("schedule holds an empty eval call or run")
            read.append((size, cut - 1, repeat))
        if pos != len(buf):
            raise CorruptDataError("schedule section has trailing bytes")
        n_calls = sum(repeat for _, _, repeat in read)
        if max_calls is not None and n_calls > max_calls:
            raise CorruptDataError(f"schedule holds {n_calls:,} eval calls; a replay here makes at most {max_calls:,}")
        schedule = cls()
        for size, cut, repeat in read:
            schedule.sizes += [size] * repeat
            schedule.cuts += [cut] * repeat
        return schedule

    @property
    def n_evaluated(self) -> int:
        return sum(self.sizes)


class ScheduleRecorder:
    """Records a Llama's eval calls and model-codes each call's first token on the fly."""

    def __init__(self, n_vocab: int):
        self.n_vocab = n_vocab
        self.clear()

    def clear(self) -> None:
        self.schedule = Schedule()
        self.plain: list[np.ndarray] = []  # tokens not model-coded, in eval order
        self.model = ModelTokenEncoder(self.n_vocab)
        self.end = 0  # context length after the recorded calls
        self.valid = True

    def invalidate(self) -> None:
        """The context changed outside ``eval`` (e.g. a KV snapshot was loaded): nothing to replay."""
        self.clear()
        self.valid = False

    def sync(self, n_tokens: int) -> None:
        """Record a cut-back of the context to ``n_tokens`` (``Llama.n_tokens`` shrank since the last call)."""
        if not self.valid or n_tokens == self.end:
            return
        if n_tokens > self.end:
            self.invalidate()
        elif n_tokens == 0:
            self.clear()  # a reset: replay starts from an empty context, as here
        else:
            self.schedule.cuts[-1] = n_tokens
            self.end = n_tokens

    def before_eval(self, n_tokens: int, tokens, logits) -> None:
        """Called by ``Llama.eval`` before decoding ``tokens``; ``logits`` are the live last-token logits."""
        self.sync(n_tokens)
        if not self.valid or len(tokens) == 0:
            return
        tokens = np.asarray(tokens, dtype=np.int32)
        if self.schedule.sizes:
            self.model.add(logits(), int(tokens[0]))
            tokens = tokens[1:]
        self.plain.append(tokens)
        self.schedule.sizes.append(len(tokens) + (len(self.schedule.sizes) > 0))
        self.schedule.cuts.append(NO_CUT)
        self.end += self.schedule.sizes[-1]

    def plain_tokens(self) -> np.ndarray:
        return np.concatenate(self.plain) if self.plain else np.zeros(0, dtype=np.int32)


def replay(llm, schedule: Schedule, plain: np.ndarray, model_stream: bytes, progress: Progress = None) -> None:
    """Repeat a recorded schedule in ``llm`` (from an empty context): bit-identical KV and logits."""
    decoder = ModelTokenDecoder(model_stream, llm.n_vocab())
    if len(plain) + len(schedule.sizes) - min(len(schedule.sizes), 1) != schedule.n_evaluated:
        raise CorruptDataError("the schedule and its tokens disagree in length")
    pos, done, total = 0, 0, schedule.n_evaluated
    for index, (size, cut) in enumerate(zip(schedule.sizes, schedule.cuts)):
        if index == 0:
            tokens = plain[:size].tolist()
        else:
            first = decoder.next(llama_api.logits(llm))
            tokens = [first] + plain[pos:pos + size - 1].tolist()
        pos += size - (index > 0)
        llm.eval(tokens)
        if cut != NO_CUT:
            if not 0 < cut < llm.n_tokens:
                raise CorruptDataError(f"schedule cuts the context to {cut} of {llm.n_tokens} tokens")
            llama_api.truncate(llm, cut)
        done += size
        report(progress, done, total)
    decoder.done()
