"""``seqkv serve``: start the OpenAI-compatible server with the SeqKV store as prompt cache (``seqkv_edge.apps.serve``)."""
from __future__ import annotations

import argparse
import signal
import sys

from ..apps.serve import STATS_PATH, create_app, default_store
from ..models import MODEL_HELP


def run_serve(args) -> int:
    import uvicorn

    from . import _model_path

    model_path = _model_path(args)
    store = args.store or default_store()
    app, server = create_app(model_path, store, budget_bytes=args.budget_bytes, n_ctx=args.n_ctx,
                             n_threads=args.threads, chat_format=args.chat_format)
    print(f"seqkv serve: {model_path} on http://{args.host}:{args.port}/v1, prompt cache in {store} "
          f"(stats at {STATS_PATH})", file=sys.stderr, flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler it
    # found: make that an exception so the store is closed before the process ends
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose_server else "warning")
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _exit_on_signal(signum, frame):
    raise SystemExit(0)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``seqkv serve``."""
    parser = subparsers.add_parser("serve", help="OpenAI-compatible server whose prompt cache is the SeqKV store")
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--store", help="store directory or redis:// URL (default: $SEQKV_HOME/server-store)")
    parser.add_argument("--budget-bytes", type=int, default=None, help="evict stored KV beyond this many bytes")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--chat-format", default=None,
                        help="llama-cpp-python chat format (default: the GGUF's template)")
    parser.add_argument("--verbose-server", action="store_true", help="uvicorn request log")
    parser.set_defaults(func=run_serve)
    return parser
