"""Crafted small files that ask for GiBs: each loader refuses them with a SeqKVError before allocating.

Every case runs in a fresh interpreter under RLIMIT_AS (the process, llama.cpp and the tiny model loaded,
takes ~350 MiB of address space; each crafted file asks for 4 GiB or more), so an unchecked allocation
shows as MemoryError or a killed process instead of a slow, swapping test.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ADDRESS_SPACE_LIMIT = 3 << 30
TESTS = Path(__file__).parent

PRELUDE = """
import resource, sys
sys.path.insert(0, {tests!r})
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
import numpy as np
from seqkv_edge.errors import SeqKVError

def tiny_llm(tmp):
    from tiny_model import write_tiny_gguf
    from seqkv_edge import Llama, SeqKV
    path = write_tiny_gguf(tmp + "/tiny.gguf", n_embd=128)
    llm = Llama(model_path=str(path), n_ctx=512, n_batch=64, n_threads=2, verbose=False,
                kv_compressor=SeqKV(kv="none", tokens="hybrid"))
    llm.eval(llm.tokenize(b"The quick brown fox jumps over the lazy dog."))
    return llm

def expect_refusal(load):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        load()
    except SeqKVError as exc:
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print("REFUSED", type(exc).__name__, exc, f"| peak resident memory grew by {{grown}} KiB")
    else:
        print("LOADED")
"""


def run_crafted(tmp_path, body: str) -> str:
    script = PRELUDE.format(tests=str(TESTS), limit=ADDRESS_SPACE_LIMIT) + textwrap.dedent(body)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "1", "TMP_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, f"the loader died (rc {done.returncode}): {done.stderr[-2000:]}"
    assert "REFUSED" in done.stdout, done.stdout + done.stderr[-2000:]
    print(done.stdout)  # the refusal and the memory it took (pytest -s shows it)
    return done.stdout


SNAPSHOT = """
import os
from seqkv_edge import SeqKV
from seqkv_edge.container.session_file import Kind, read_container, write_container
tmp = os.environ["TMP_DIR"]
llm = tiny_llm(tmp)
SeqKV().save(llm, tmp + "/real.seqkv")
real = read_container(tmp + "/real.seqkv")
sections = [(kind, bytes(payload)) for kind, payload in real.sections]
meta = real.meta

def replace(kind, payload):
    return [(k, payload if k == kind else p) for k, p in sections]
"""


def test_a_skeleton_describing_a_huge_state_is_refused(tmp_path):
    out = run_crafted(tmp_path, SNAPSHOT + """
from seqkv_edge.container.chunk_format import ChunkLayout
from seqkv_edge.codecs.zstd_bytes import ZstdCodec
# one f32 layer of 1 MiB rows (the parser's per-row bound) over 8,192 cells: 16 GiB of K and V
layout = ChunkLayout(259, True, True, False, 1, 0, ((0, 262144),), ((0, 262144),), bytes(8))
skeleton = layout.skeleton(8192)
nbytes = 8192 * (1 << 20)
meta = {**meta, "state_bytes": len(skeleton) + 2 * nbytes, "tensors": [
    {"name": f"kv0.s0.l0.{kind}", "ggml_type": 0, "token_major": kind == "k", "n_cells": 8192,
     "n_channels": 262144, "nbytes": nbytes} for kind in "kv"]}
write_container(tmp + "/crafted.seqkv", meta, replace(Kind.SKELETON, ZstdCodec().encode(skeleton)))
print("file bytes", os.path.getsize(tmp + "/crafted.seqkv"))
expect_refusal(lambda: SeqKV().load(llm, tmp + "/crafted.seqkv"))
""")
    assert "REFUSED CorruptDataError" in out


def test_a_zstd_frame_stating_a_huge_size_is_refused(tmp_path):
    out = run_crafted(tmp_path, SNAPSHOT + """
import struct, zstandard
frame = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(100))
assert frame[4] & 0xC0 == 0  # a one-byte content size: widen it to eight bytes stating 8 GiB
crafted = frame[:4] + bytes([frame[4] | 0xC0]) + struct.pack("<Q", 8 << 30) + frame[6:]
assert zstandard.frame_content_size(crafted) == 8 << 30
write_container(tmp + "/crafted.seqkv", meta, replace(Kind.SKELETON, crafted))
expect_refusal(lambda: SeqKV().load(llm, tmp + "/crafted.seqkv"))
""")
    assert "REFUSED CorruptDataError" in out


def test_token_counts_beyond_the_context_are_refused_before_allocating(tmp_path):
    out = run_crafted(tmp_path, SNAPSHOT + """
import zlib
from seqkv_edge.codecs.varint import write_varint
payload = np.random.default_rng(0).integers(0, 256, 131072, dtype=np.uint8).tobytes()
n_claimed = (1 << 31) - 1  # 8 GiB of int32, within 16,384 tokens per payload byte
stream = write_varint(n_claimed) + zlib.crc32(b"").to_bytes(4, "little") + payload
write_container(tmp + "/crafted.seqkv", meta, replace(Kind.TOKENS, stream))
expect_refusal(lambda: SeqKV().load(llm, tmp + "/crafted.seqkv"))
""")
    assert "REFUSED CorruptDataError" in out


def test_a_schedule_of_billions_of_calls_is_refused(tmp_path):
    out = run_crafted(tmp_path, """
import os
from seqkv_edge import SeqKV
from seqkv_edge.container.session_file import Kind, read_container, write_container
from seqkv_edge.codecs.varint import write_varint
tmp = os.environ["TMP_DIR"]
llm = tiny_llm(tmp)
SeqKV(kv="none", tokens="hybrid").save(llm, tmp + "/real.seqkv")
real = read_container(tmp + "/real.seqkv")
n_runs = 4000
run = write_varint(1) + write_varint(0) + write_varint(2_000_000)  # within 128 calls per section byte
runs = write_varint(n_runs) + run * n_runs  # 20 KB: 8 G eval calls, 128 GB as Python lists
sections = [(k, runs if k == Kind.SCHEDULE_RUNS else bytes(p)) for k, p in real.sections]
write_container(tmp + "/crafted.seqkv", bytes(real.header), sections)
expect_refusal(lambda: SeqKV().load(llm, tmp + "/crafted.seqkv"))
""")
    assert "REFUSED CorruptDataError" in out


CHUNKS = """
import os
from seqkv_edge.container.chunk_format import _LAYOUT_HEAD, _TENSOR
from seqkv_edge.container.chunks import ChunkCodec
from seqkv_edge.state.blob import parse_seq_state, read_seq_state, max_cell_bytes
tmp = os.environ["TMP_DIR"]
llm = tiny_llm(tmp)
n = llm.n_tokens
state = parse_seq_state(read_seq_state(llm.ctx), model=llm)
codec = ChunkCodec(n_threads=1)
chunk = codec.session_chunks(state, np.asarray(llm.input_ids[:n]), llm.n_vocab(), bytes(8)).payload(0, n)
layout_at = 5 + _LAYOUT_HEAD.size  # magic, version, the layout head; then per tensor (type, n_channels)

def with_channels(payload, n_channels):
    head = _TENSOR.unpack_from(payload, layout_at)
    return payload[:layout_at] + _TENSOR.pack(head[0], n_channels) + payload[layout_at + _TENSOR.size:]
"""


def test_a_chunk_header_claiming_huge_tensors_is_refused(tmp_path):
    out = run_crafted(tmp_path, CHUNKS + """
crafted = with_channels(chunk, 1 << 28)  # f16 rows of 512 MiB: GiBs for a few cells
expect_refusal(lambda: codec.rebuild([crafted], n, bytes(8), node_ends=[n], max_cell_bytes=max_cell_bytes(llm)))
expect_refusal(lambda: codec.split(crafted, 0, 1, n))
""")
    assert out.count("REFUSED CorruptDataError") == 2


def test_a_kv_lossless_header_claiming_billions_of_channels_is_refused(tmp_path):
    out = run_crafted(tmp_path, """
import struct
from seqkv_edge.codecs.kv_lossless import KVLosslessCodec
# a 32-byte header: f16, token-major, 2^31 - 1 channels of 0 tokens, total size 32
header = b"KVL\\x01" + bytes([1, 1]) + bytes(2) + struct.pack("<II", (1 << 31) - 1, 0) + struct.pack("<Q", 32) + bytes(8)
expect_refusal(lambda: KVLosslessCodec().decode_stream(header))
""")
    assert "REFUSED CorruptDataError" in out
