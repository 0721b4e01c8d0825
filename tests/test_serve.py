"""``seqkv serve`` with the real ``openai`` client on loopback: a multi-turn chat, a server restart,
and the next turn's history restored from the store (the server's cache counters say so)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's server extra is not installed")

REPO = Path(__file__).resolve().parents[1]
SYSTEM = ("You are a careful assistant for a small team. Answer in short sentences, cite the manual section "
          "you rely on, and say so when you do not know. The manual covers setup, backups and upgrades.")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, model: str, store: Path, home: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SEQKV_HOME": str(home), "PYTHONPATH": str(REPO)}
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seqkv_edge", "serve", "--model", model, "--store", str(store), "--port",
             str(self.port), "--n-ctx", "2048", "--threads", "2"],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=120)
        self._wait_ready(log)

    def _wait_ready(self, log: Path, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the server did not come up:\n{log.read_text()}")

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/seqkv/stats", timeout=5) as response:
            return json.loads(response.read())

    def chat(self, messages: list) -> tuple[str, int]:
        reply = self.client.chat.completions.create(model="any", messages=messages, max_tokens=12, temperature=0.0,
                                                    seed=3)
        return reply.choices[0].message.content or "", reply.usage.prompt_tokens

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully; the store is closed
        try:
            assert self.proc.wait(timeout=30) == 0
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log.close()


@pytest.fixture
def start_server(tmp_path):
    servers = []

    def start(model: str) -> Server:
        server = Server(model, tmp_path / "store", tmp_path / "home", tmp_path / "server.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def _conversation_survives_restart(start_server, model: str) -> None:
    server = start_server(model)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "How do I back up?"}]
    answer, _ = server.chat(messages)
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And how often?"}]
    answer, second_prompt = server.chat(messages)
    stats = server.stats()
    assert stats["cache"]["stores"] == 2 and stats["store"]["sessions"] == 2, stats
    # the second turn re-used the live context; both turns' sessions share the first one's chunks
    assert stats["store"]["tokens"] < 2 * second_prompt, stats
    server.stop()

    server = start_server(model)
    assert server.stats()["cache"]["hits"] == 0
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Thanks. Upgrades?"}]
    server.chat(messages)
    cache = server.stats()["cache"]
    assert cache["hits"] == 1, cache
    assert cache["hit_tokens"] >= second_prompt, (cache, second_prompt)  # the whole history came from the store

    # another conversation with the same system prompt: the shared prefix is stored once
    before = server.stats()["store"]["tokens"]
    _, other_prompt = server.chat([{"role": "system", "content": SYSTEM},
                                   {"role": "user", "content": "Who wrote the manual?"}])
    added = server.stats()["store"]["tokens"] - before
    assert 0 < added < other_prompt - len(SYSTEM) // 8, (added, other_prompt)
    server.stop()


def test_conversation_survives_restart_tiny(start_server, tiny_model_path):
    _conversation_survives_restart(start_server, tiny_model_path)


@pytest.mark.real_model
def test_conversation_survives_restart_real_model(start_server, real_model_path):
    _conversation_survives_restart(start_server, real_model_path)
