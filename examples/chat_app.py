"""A minimal chat app that survives restarts: the conversation is saved after every answer.

    python examples/chat_app.py                       # default model, session in ./chat_app.seqkv
    python examples/chat_app.py --model my.gguf --session work.seqkv

The session file holds the context (compressed KV); the messages sit beside it as JSON. On start
both are restored, so the next answer only evaluates the new message. (``seqkv chat`` is the full
version: streaming, /fork, /info, Ctrl-C.)
"""
import argparse
import json
import os
from pathlib import Path

from seqkv_edge import Llama, SeqKV


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="GGUF path (default: the packaged Qwen2.5-Coder-0.5B)")
    parser.add_argument("--session", default="chat_app.seqkv")
    args = parser.parse_args()
    if not args.model:
        from seqkv_edge.models import default_model_path

        args.model = default_model_path()
    session, transcript = Path(args.session), Path(args.session).with_suffix(".json")
    llm = Llama(model_path=args.model, n_ctx=4096, verbose=False, kv_compressor=SeqKV())
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    if session.exists() and transcript.exists():
        info = llm.load_session(session)
        messages = json.loads(transcript.read_text())
        print(f"[restored {info.n_tokens} tokens in {info.seconds['total']:.2f}s, {len(messages) - 1} messages]")
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            return
        if not question:
            continue
        messages.append({"role": "user", "content": question})
        reply = llm.create_chat_completion(messages, max_tokens=256)["choices"][0]["message"]["content"]
        print(f"bot> {reply}")
        messages.append({"role": "assistant", "content": reply})
        info = llm.save_session(session)  # atomic: a crash never leaves half a file
        tmp = transcript.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(messages))
        os.replace(tmp, transcript)
        print(f"[saved {info.n_tokens} tokens: {info.file_bytes:,} bytes, {info.ratio:.2f}x smaller than llama.cpp's]")


if __name__ == "__main__":
    main()
