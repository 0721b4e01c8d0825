"""Many chats, one copy of what they share: named sessions in a prefix-deduplicating store.

Three conversations start from the same long document; the store keeps its KV chunks once, and
a fresh process restores any conversation from it.

    python examples/dedup_sessions.py [--model GGUF] [--store DIR]
"""
import argparse
import tempfile

from seqkv_edge import Llama, SeqKV
from seqkv_edge.sessions.named import load_named, open_session_store, save_named
from seqkv_edge.textdata import read_text

QUESTIONS = ["Summarise the preamble.", "What does 'convey' mean here?", "Can I sell copies?"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="GGUF path (default: the packaged Qwen2.5-Coder-0.5B)")
    parser.add_argument("--store", default=None, help="store directory or redis:// URL (default: a temp dir)")
    parser.add_argument("--doc-tokens", type=int, default=400)
    args = parser.parse_args()
    if not args.model:
        from seqkv_edge.models import default_model_path

        args.model = default_model_path()
    llm = Llama(model_path=args.model, n_ctx=2048, verbose=False, kv_compressor=SeqKV())
    document = llm.tokenize(read_text()[0].encode())[:args.doc_tokens]
    raw_bytes = 0
    with open_session_store(args.store or tempfile.mkdtemp(prefix="seqkv-store-")) as store:
        for number, question in enumerate(QUESTIONS, start=1):
            llm.reset()
            llm.eval(document + llm.tokenize(f"\n\nQ: {question}\nA:".encode(), add_bos=False))
            info = save_named(llm, store, f"chat-{number}")
            raw_bytes += info.raw_bytes
            print(f"chat-{number}: {info.n_tokens} tokens, {info.reused_tokens} already stored, "
                  f"{info.new_bytes:,} new bytes")
        stats = store.stats()
        print(f"store: {stats.sessions} sessions, {stats.tokens} distinct tokens, {stats.payload_bytes:,} bytes "
              f"(llama.cpp's raw states: {raw_bytes:,} bytes)")

        fresh = Llama(model_path=args.model, n_ctx=2048, verbose=False, kv_compressor=SeqKV())
        restored = load_named(fresh, store, "chat-2")
        print(f"chat-2 restored: {restored.restored_tokens} tokens from the store, {restored.replayed_tokens} "
              f"replayed, {restored.seconds['total']:.2f}s")


if __name__ == "__main__":
    main()
