"""``seqkv store ls|rm|gc|stats LOCATION``: look after a session store from the shell.

``cli.build_parser`` calls :func:`add_store_parser`; each command takes the argparse namespace
and returns an exit status. ``LOCATION`` is a store directory or a ``redis://`` URL.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..sessions.named import delete_named, list_named, open_session_store


def _open(args):
    location = str(args.location)
    if "://" not in location and not Path(location, "index.sqlite3").is_file():
        raise FileNotFoundError(f"no session store at {location}")
    return open_session_store(location)


def cmd_ls(args) -> int:
    with _open(args) as store:
        rows = list_named(store)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"{args.location}: no sessions")
        return 0
    width = max([4] + [len(r["name"]) for r in rows])
    print(f"{'name':<{width}}  {'kind':<5}  {'tokens':>8}  {'KV tokens':>9}  created")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['kind']:<5}  {r['n_tokens']:>8,}  {r['kv_tokens']:>9,}  {r['created']}")
    return 0


def cmd_rm(args) -> int:
    status = 0
    with _open(args) as store:
        for name in args.names:
            try:
                delete_named(store, name)
            except KeyError as error:
                print(f"seqkv store rm: {error.args[0]}")
                status = 1
    return status


def cmd_gc(args) -> int:
    with _open(args) as store:
        dropped = store.gc()
        if args.budget_bytes is not None:
            evicted = store.evict(args.budget_bytes)
            print(f"evicted the KV snapshots of {len(evicted)} sessions (tokens are kept for named sessions)")
        report = store.check(deep=args.deep)
    print(f"dropped {dropped} unused nodes; {report.nodes} nodes, {report.sessions} sessions, "
          f"{report.payload_bytes:,} chunk bytes; store checked ({report.orphans_removed} orphan blobs removed)")
    return 0


def cmd_stats(args) -> int:
    with _open(args) as store:
        stats = store.stats()
        rows = list_named(store)
    named = [r for r in rows if r["kind"] == "named"]
    figures = {
        "location": str(args.location),
        "sessions": len(rows),
        "named_sessions": len(named),
        "named_with_full_kv": sum(r["kv_tokens"] == r["n_tokens"] for r in named),
        "store_sessions": stats.sessions,
        "nodes": stats.nodes,
        "distinct_tokens": stats.tokens,
        "session_tokens": sum(r["n_tokens"] for r in rows),
        "chunk_bytes": stats.payload_bytes,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:<20} {value:,}" if isinstance(value, int) else f"{key:<20} {value}")
    return 0


def add_store_parser(subparsers) -> None:
    """Add ``store`` with its sub-commands to the ``seqkv`` parser's subparsers."""
    store = subparsers.add_parser("store", help="list, delete, clean up and size a session store")
    sub = store.add_subparsers(dest="store_command", required=True)

    def command(name, func, help_text):
        parser = sub.add_parser(name, help=help_text)
        parser.add_argument("location", help="store directory or redis://host:port/db URL")
        parser.set_defaults(func=func)
        return parser

    command("ls", cmd_ls, "list sessions: tokens, and how many a restore takes from stored KV").add_argument(
        "--json", action="store_true")
    command("rm", cmd_rm, "delete named sessions (their record and KV snapshot)").add_argument("names", nargs="+")
    gc = command("gc", cmd_gc, "drop unused nodes, optionally evict KV down to a budget, and check the store")
    gc.add_argument("--budget-bytes", type=int, help="evict KV snapshots until chunks fit in this many bytes")
    gc.add_argument("--deep", action="store_true", help="also verify every chunk's checksum")
    command("stats", cmd_stats, "sessions, nodes, distinct tokens and bytes").add_argument("--json", action="store_true")
