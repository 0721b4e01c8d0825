"""A chat whose session is saved, compressed, after every turn (``seqkv chat``; front end in ``cli.chat``).

The session lives in the deduplicating store ``$SEQKV_HOME/chats/store`` (with ``--tier tokens``: in
``$SEQKV_HOME/chats/<name>.seqkv``); saves are atomic, so a process killed between turns loses nothing,
and it is restored on the next start with the same ``--session``.

    $ seqkv chat --session work
    you> /info            # tokens, file bytes, ratio vs llama.cpp's raw state, restore seconds
    you> /fork idea       # continue in a copy named "idea"; "work" stays as it was
    you> /load work       # switch back
    you> /quit

Ctrl-C during an answer stops the answer (what was generated is kept); Ctrl-D or ``/quit``
leaves. Chat models with a ChatML template (Qwen, ...) are prompted in ChatML; other models
get a plain ``User:`` / ``Assistant:`` transcript.
"""
from __future__ import annotations

import codecs
import logging
import re
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

from ..config import SeqKV
from ..errors import ScheduleUnavailableError, SeqKVError, SessionCancelled
from ..models import seqkv_home
from ..sessions.prefill import bar, prefill
from ..state import llama_api

log = logging.getLogger(__name__)

DEFAULT_SYSTEM = "You are a helpful assistant."
SESSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PREFILL_BAR_MIN_TOKENS = 256  # prompts at least this long get a progress bar


@dataclass(frozen=True)
class ChatTemplate:
    """How turns become text. Every answer is followed by ``close``, so a saved context ends between turns."""

    name: str
    system: str  # "{}" is the system prompt
    user: str  # "{}" is the user's message; ends where the assistant's answer begins
    close: str  # evaluated after each answer
    stop: tuple = ()  # special tokens that end an answer (besides EOS)


CHATML = ChatTemplate("chatml", "<|im_start|>system\n{}<|im_end|>\n",
                      "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>\n",
                      ("<|im_end|>", "<|endoftext|>"))
PLAIN = ChatTemplate("plain", "{}\n", "\nUser: {}\nAssistant:", "\n")
TEMPLATES = {"chatml": CHATML, "plain": PLAIN}


def pick_template(llm, name: str = "auto") -> ChatTemplate:
    """ChatML when the GGUF's chat template speaks it, else the plain transcript (or ``name``)."""
    if name != "auto":
        return TEMPLATES[name]
    return CHATML if "<|im_start|>" in llm.metadata.get("tokenizer.chat_template", "") else PLAIN


def snapshot_config() -> SeqKV:
    """Lossless KV snapshots in the deduplicating store ``$SEQKV_HOME/chats/store`` (restore without recompute)."""
    return SeqKV(store=str(seqkv_home() / "chats" / "store"))


TIERS = {"snapshot": snapshot_config, "tokens": lambda: SeqKV(kv="none", tokens="hybrid"), "auto": snapshot_config}


@dataclass
class Sampling:
    max_tokens: int = 512
    temp: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.1
    ignore_eos: bool = False


@dataclass
class TurnResult:
    text: str
    n_generated: int
    stopped: bool  # Ctrl-C
    reason: str  # "stop", "length", "context", "interrupted"


@dataclass
class SessionStatus:
    """What ``/info`` shows."""

    name: str
    path: Path
    n_tokens: int
    file_bytes: int = 0
    raw_bytes: int = 0
    restore_seconds: Optional[float] = None
    restored_by: str = ""
    save_seconds: Optional[float] = None

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.file_bytes if self.file_bytes else 0.0


class _Interrupt:
    """Ctrl-C sets a flag that the generation loop polls between tokens (never mid llama_decode)."""

    def __init__(self):
        self.hit = False

    @contextmanager
    def armed(self):
        self.hit = False
        previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: Ctrl-C keeps its default meaning
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    def _handler(self, signum, frame):
        self.hit = True


class ChatSession:
    """A chat on a ``seqkv_edge.Llama``, persisted as ``<home>/chats/<name>.seqkv`` after every turn.

    >>> chat = ChatSession(llm, "work")          # doctest: +SKIP
    >>> chat.resume()  # restores work.seqkv when it exists  # doctest: +SKIP
    >>> chat.turn("Why is the sky blue?")  # streams the answer to stdout, then saves  # doctest: +SKIP
    """

    def __init__(self, llm, name: str, *, home: Optional[Path] = None, template: Optional[ChatTemplate] = None,
                 system: str = DEFAULT_SYSTEM, sampling: Optional[Sampling] = None, out: TextIO = sys.stdout):
        self.llm = llm
        self.name = check_name(name)
        self.dir = Path(home or seqkv_home()) / "chats"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.template = template or pick_template(llm)
        self.system = system
        self.sampling = sampling or Sampling()
        self.out = out
        self.interrupt = _Interrupt()
        self._pending: list[int] = []  # the last sampled token, not evaluated yet
        self.status = SessionStatus(name, self.path(name), 0)
        self.stop_ids = {llm.token_eos()} | self._special_ids(self.template.stop)

    def path(self, name: str) -> Path:
        if self.llm.session_store is not None:  # named sessions in the deduplicating store
            return Path(str(self.llm.kv_compressor.store)) / check_name(name)
        return self.dir / f"{check_name(name)}.seqkv"

    def exists(self, name: str) -> bool:
        if self.llm.session_store is None:
            return self.path(name).exists()
        from ..sessions.named import list_named

        return any(row["name"] == name and row["kind"] == "named" for row in list_named(self.llm.session_store))

    # ---- persistence ----------------------------------------------------------------------

    def resume(self) -> bool:
        """Restore the saved session if it exists (a progress bar while tokens are replayed)."""
        if not self.exists(self.name):
            return False
        self.load(self.name)
        return True

    def load(self, name: str) -> SessionStatus:
        """Switch to session ``name``, restoring it (KeyError when there is none)."""
        path = self.path(name)
        if not self.exists(name):
            raise KeyError(f"no saved session {name!r} ({path})")
        if self.llm.session_store is not None:
            return self._load_named(name)
        drawn = bar(f"replaying {name}", file=sys.stderr)  # drawn on the first report: snapshots replay nothing
        try:
            info = self.llm.load_session(path, progress=drawn)
        finally:
            drawn.close()
        self.name = name
        self.status = SessionStatus(name, path, info.n_tokens, info.file_bytes, info.raw_bytes,
                                    info.seconds.get("total"), info.restored_by)
        return self.status

    def _load_named(self, name: str) -> SessionStatus:
        drawn = bar(f"replaying {name}", file=sys.stderr)  # drawn only when tokens are recomputed
        try:
            info = self.llm.load_session(name, progress=drawn)
        finally:
            drawn.close()
        how = f"{info.restored_tokens} tokens from the store, {info.replayed_tokens} replayed"
        self.name = name
        self.status = SessionStatus(name, self.path(name), info.n_tokens, self._stored_bytes(name), info.raw_bytes,
                                    info.seconds.get("total"), how)
        return self.status

    def _stored_bytes(self, name: str) -> int:
        """Bytes of the store chunks this session's KV is made of (shared prefixes included)."""
        store = self.llm.session_store
        try:
            record = store.get_session(name)
        except KeyError:
            return 0
        return sum(node.nbytes for node in store.node_stats(record.node_ids))

    def _save_named(self, name: str) -> SessionStatus:
        info = self.llm.save_session(name)
        same = name == self.name
        self.status = SessionStatus(name, self.path(name), info.n_tokens, self._stored_bytes(name), info.raw_bytes,
                                    self.status.restore_seconds if same else None,
                                    self.status.restored_by if same else "", info.seconds.get("total"))
        self.name = name
        return self.status

    def save(self, name: Optional[str] = None) -> SessionStatus:
        """Save the context as session ``name`` (default: the current one); atomic."""
        name = name or self.name
        if self.llm.session_store is not None:
            return self._save_named(name)
        path = self.path(name)
        try:
            info = self.llm.save_session(path)
        except ScheduleUnavailableError as error:  # restored from a snapshot: its eval schedule cannot be replayed
            log.info("saving %s with portable tokens: %s", name, error)
            info = SeqKV(kv="none", tokens="portable").save(self.llm, path)
        self.status = SessionStatus(name, path, info.n_tokens, info.file_bytes, info.raw_bytes,
                                    self.status.restore_seconds if name == self.name else None,
                                    self.status.restored_by if name == self.name else "",
                                    info.seconds.get("total"))
        self.name = name
        return self.status

    def fork(self, name: str) -> SessionStatus:
        """Continue in a copy named ``name``; the current session's file stays as it was."""
        if self.exists(name):
            raise ValueError(f"session {name!r} exists already; /load it or fork under another name")
        if self.llm.n_tokens == 0:
            self.name, self.status = name, SessionStatus(name, self.path(name), 0)
            return self.status
        return self.save(name)

    # ---- a turn -----------------------------------------------------------------------------

    def turn(self, message: str) -> TurnResult:
        """Answer ``message`` (streamed to ``out``) and save the session."""
        result = self.generate(message)
        if self.llm.n_tokens:
            self.save()
        return result

    def prompt_tokens(self, message: str) -> list[int]:
        """The tokens to append for a user message (with BOS and system prompt on the first turn).

        The template's markers are parsed as special tokens, the message is not: typed text cannot
        forge a turn boundary.
        """
        first = self.llm.n_tokens == 0
        before, after = self.template.user.split("{}")
        if first and self.system:
            before = self.template.system.format(self.system) + before
        tokenize = self.llm.tokenize
        return (tokenize(before.encode(), add_bos=first, special=True)
                + tokenize(message.encode(), add_bos=False, special=False)
                + tokenize(after.encode(), add_bos=False, special=True))

    def generate(self, message: str) -> TurnResult:
        llm, sampling = self.llm, self.sampling
        start_tokens = llm.n_tokens
        new = self.prompt_tokens(message)
        close = llm.tokenize(self.template.close.encode(), add_bos=False, special=True)
        room = llm.n_ctx() - start_tokens - len(new) - len(close) - 1
        if room < 1:
            raise SeqKVError(f"the context is full ({start_tokens} of {llm.n_ctx()} tokens): /fork to keep this "
                             "session and start over with a larger --n-ctx, or start another --session")
        limit = min(room, sampling.max_tokens) if sampling.max_tokens > 0 else room
        with self.interrupt.armed() as interrupt:
            if not self._prefill(new[:-1], interrupt):
                self._cut(start_tokens)
                return TurnResult("", 0, True, "interrupted")
            text, count, reason = self._stream(list(llm.input_ids[:llm.n_tokens]) + new[-1:], limit, interrupt)
            # the last sampled token was not evaluated yet; the close marks the end of the answer
            llm.eval(self._pending + close)
        return TurnResult(text, count, reason == "interrupted", reason)

    def _stream(self, tokens: list[int], limit: int, interrupt: _Interrupt) -> tuple[str, int, str]:
        llm, sampling = self.llm, self.sampling
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        answer: list[int] = []
        self._pending = []
        reason = "length"
        generator = llm.generate(tokens, top_k=sampling.top_k, top_p=sampling.top_p, temp=sampling.temp,
                                 repeat_penalty=sampling.repeat_penalty)
        try:
            for token in generator:
                if token in self.stop_ids and not (sampling.ignore_eos and token == llm.token_eos()):
                    reason, self._pending = "stop", []  # the answer's last token was evaluated
                    break
                answer.append(token)
                self._pending = [token]
                piece = decoder.decode(llm.detokenize([token], prev_tokens=answer[:-1] or None))
                self.out.write(printable(piece))
                self.out.flush()
                if interrupt.hit:
                    reason = "interrupted"
                    break
                if len(answer) >= limit:
                    break
        finally:
            generator.close()
        text = llm.detokenize(answer).decode("utf-8", errors="replace")
        if reason == "length" and not 0 < self.sampling.max_tokens <= limit:
            reason = "context"
        return text, len(answer), reason

    def _prefill(self, tokens: list[int], interrupt: _Interrupt) -> bool:
        """Evaluate ``tokens`` in n_batch chunks, with a progress bar when long; False on Ctrl-C."""
        drawn = bar("prefill", PREFILL_BAR_MIN_TOKENS, file=sys.stderr)

        def progress(done: int, total: int) -> bool:
            drawn(done, total)
            return not interrupt.hit

        try:
            if interrupt.hit:
                return False
            prefill(self.llm, tokens, progress)
        except SessionCancelled:
            return False
        finally:
            drawn.close()
        return True

    def _cut(self, n_tokens: int) -> None:
        llama_api.truncate(self.llm, n_tokens)

    def _special_ids(self, texts) -> set:
        ids = set()
        for text in texts:
            tokens = self.llm.tokenize(text.encode(), add_bos=False, special=True)
            if len(tokens) == 1:
                ids.add(tokens[0])
        return ids


def printable(text: str) -> str:
    """Drop control characters (a model's bytes must not drive the terminal), keep newlines and tabs."""
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "\ufffd" for ch in text)


def check_name(name: str) -> str:
    if not SESSION_NAME.match(name or ""):
        raise ValueError(f"session name {name!r}: use letters, digits, '.', '_' or '-' (up to 100)")
    return name
