"""``seqkv chat``: the terminal front end of :class:`seqkv_edge.apps.chat.ChatSession`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ..apps.chat import (
    DEFAULT_SYSTEM,
    TEMPLATES,
    TIERS,
    ChatSession,
    Sampling,
    SessionStatus,
    check_name,
    pick_template,
)
from ..config import SeqKV
from ..errors import SeqKVError
from ..models import MODEL_HELP

HELP = """commands:
  /save          save the session now (it is also saved after every answer)
  /load NAME     switch to session NAME (restored from its file)
  /fork NAME     copy this session to NAME and continue there
  /info          tokens, file size, ratio vs llama.cpp's raw state, restore time
  /help          this list
  /quit          leave (Ctrl-D too); Ctrl-C stops an answer"""


def format_info(status: SessionStatus, tier: str) -> str:
    lines = [f"session  {status.name} ({status.path})", f"tokens   {status.n_tokens:,}"]
    if status.file_bytes:
        lines.append(f"file     {status.file_bytes:,} bytes ({tier})")
        lines.append(f"raw      llama.cpp state {status.raw_bytes:,} bytes -> ratio {status.ratio:,.1f}x")
    else:
        lines.append("file     not saved yet")
    if status.restore_seconds is not None:
        lines.append(f"restore  {status.restore_seconds:.3f} s ({status.restored_by})")
    else:
        lines.append("restore  - (not restored in this run)")
    if status.save_seconds is not None:
        lines.append(f"save     {status.save_seconds:.3f} s")
    return "\n".join(lines)


def _tier_name(config: SeqKV) -> str:
    if config.store:
        return f"lossless KV snapshots, deduplicated in {config.store}"
    return "lossless KV snapshot" if config.kv == "lossless" else f"{config.tokens} tokens"


# ---- the command ------------------------------------------------------------------------------

def run_chat(args) -> int:
    from ..llama import Llama
    from . import _model_path

    model_path = _model_path(args)
    config = TIERS[args.tier]()
    print(f"loading {model_path} ...", file=sys.stderr, flush=True)
    import llama_cpp

    seed = args.seed if args.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED
    llm = Llama(model_path=model_path, n_ctx=args.n_ctx, n_threads=args.threads, seed=seed,
                verbose=False, kv_compressor=config)
    chat = ChatSession(llm, args.session, template=pick_template(llm, args.template), system=args.system,
                       sampling=Sampling(args.max_tokens, args.temp, args.top_p, args.top_k, args.repeat_penalty,
                                         args.ignore_eos))
    if chat.resume():
        s = chat.status
        print(f"[resumed {s.name}: {s.n_tokens:,} tokens in {s.restore_seconds:.2f}s ({s.restored_by})]", flush=True)
    else:
        print(f"[new session {chat.name}; saved to {chat.path(chat.name)} after every answer]", flush=True)
    print(f"[model {Path(model_path).name}, template {chat.template.name}, storage {_tier_name(config)}; /help]",
          flush=True)
    if not llm.metadata.get("tokenizer.chat_template") and args.template == "auto":
        print("[this model has no chat template (a base model, not an instruct one): it continues a plain "
              "User:/Assistant: transcript and may not answer like a chat model; use an instruct model for chat]",
              flush=True)
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    return repl(chat, _tier_name(config))


def repl(chat: ChatSession, tier: str) -> int:
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print("\n[Ctrl-D or /quit to leave]")
            continue
        line = line.strip()
        if not line:
            continue
        try:
            if line.startswith("/"):
                if command(chat, line, tier) == "quit":
                    return 0
                continue
            print("bot> ", end="", flush=True)
            result = chat.turn(line)
            note = {"interrupted": " [stopped]", "context": " [context full]"}.get(result.reason, "")
            s = chat.status
            print(f"{note}\n[saved {s.n_tokens} tokens, {s.file_bytes:,} bytes, {s.ratio:,.1f}x smaller than "
                  f"llama.cpp's state, {s.save_seconds:.2f}s]", flush=True)
        except (SeqKVError, ValueError, KeyError) as error:
            print(f"\n[error: {error}]", flush=True)


def command(chat: ChatSession, line: str, tier: str) -> Optional[str]:
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name == "/quit" or name == "/exit":
        return "quit"
    if name == "/help":
        print(HELP)
    elif name == "/info":
        print(format_info(chat.status, tier))
    elif name == "/save":
        if chat.llm.n_tokens == 0:
            print("[nothing to save yet]")
        else:
            s = chat.save()
            print(f"[saved {s.n_tokens} tokens to {s.path}, {s.file_bytes:,} bytes]")
    elif name in ("/load", "/fork"):
        if not arg:
            print(f"[usage: {name} NAME]")
        elif name == "/load":
            s = chat.load(check_name(arg))
            print(f"[loaded {s.name}: {s.n_tokens:,} tokens in {s.restore_seconds:.2f}s ({s.restored_by})]")
        else:
            s = chat.fork(arg)
            print(f"[forked: now in {s.name} ({s.n_tokens:,} tokens)]")
    else:
        print(f"[unknown command {name}; /help lists them]")
    return None


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``seqkv chat``."""
    parser = subparsers.add_parser("chat", help="terminal chat, saved compressed after every turn, resumed on start")
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--session", default="default", help="session name (default: %(default)s)")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=512, help="per answer; 0: until the context is full")
    parser.add_argument("--temp", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--repeat-penalty", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=-1, help="sampling seed (-1: random)")
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop answers at end-of-sequence")
    parser.add_argument("--system", default=DEFAULT_SYSTEM, help="system prompt of new sessions")
    parser.add_argument("--template", choices=["auto", *TEMPLATES], default="auto")
    parser.add_argument("--tier", choices=list(TIERS), default="auto",
                        help="snapshot: lossless KV (instant restore); tokens: hybrid tokens (tiny, replayed); "
                             "auto: snapshot when its codec is installed")
    parser.set_defaults(func=run_chat)
    return parser
