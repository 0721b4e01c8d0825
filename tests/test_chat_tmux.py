"""``seqkv chat`` driven for real in a terminal (tmux): turns, restart, kill -9, Ctrl-C.

The tiny model's answers are gibberish bytes; what is checked is the session's bookkeeping: the
token count each save reports is the count a restarted chat restores.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

REPO = Path(__file__).resolve().parents[1]
PROMPT = "you> "
SAVED = re.compile(r"\[saved (\d+) tokens")


class Terminal:
    """One chat process in a detached tmux session on a private tmux server."""

    def __init__(self, socket: str, name: str, home: Path, model: str, *args: str):
        self.socket, self.name = socket, name
        env = f"SEQKV_HOME={home} PYTHONPATH={REPO} PYTHONUNBUFFERED=1"
        command = f"exec env {env} {sys.executable} -m seqkv_edge chat --model {model} {' '.join(args)}"
        self.tmux("new-session", "-d", "-s", name, "-x", "160", "-y", "50", command)
        self.pid = int(self.tmux("display-message", "-p", "-t", name, "#{pane_pid}").strip())

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True,
                              cwd=REPO).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", self.name, "-S", "-5000")

    def send(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.name, "-l", text)
        self.tmux("send-keys", "-t", self.name, "Enter")

    def wait(self, predicate, timeout: float = 90.0, what: str = "") -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or predicate}; screen:\n{self.screen()}")

    def prompts(self, screen: str) -> int:
        return sum(line.startswith(PROMPT) or line == PROMPT.strip() for line in screen.splitlines())

    def wait_prompt(self, count: int, timeout: float = 90.0) -> str:
        return self.wait(lambda s: self.prompts(s) >= count and s.rstrip().endswith(PROMPT.strip()),
                         timeout, f"prompt #{count}")

    def turn(self, text: str) -> int:
        """Send a message, wait for the answer and its save; returns the saved token count."""
        before = self.prompts(self.screen())
        self.send(text)
        screen = self.wait_prompt(before + 1)
        return int(SAVED.findall(screen)[-1])

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def wait_exit(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if subprocess.run(["tmux", "-L", self.socket, "has-session", "-t", self.name],
                              capture_output=True).returncode != 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"the chat did not exit; screen:\n{self.screen()}")


@pytest.fixture
def terminal(tmp_path, tiny_model_path):
    socket = f"seqkv-test-{os.getpid()}-{tmp_path.name}"
    home = tmp_path / "home"
    started = []

    def start(session: str, *args: str) -> Terminal:
        term = Terminal(socket, f"chat{len(started)}", home, tiny_model_path, "--session", session, *args)
        started.append(term)
        term.wait_prompt(1)
        return term

    start.home = home
    yield start
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


TIER_ARGS = ("--max-tokens", "24", "--seed", "7")


@pytest.mark.parametrize("tier", ["tokens", "snapshot"])
def test_two_turns_quit_restart_restores_tokens(terminal, tier):
    chat = terminal("alpha", "--tier", tier, *TIER_ARGS)
    first = chat.turn("hello there")
    second = chat.turn("and a second question")
    assert 0 < first < second
    if tier == "snapshot":  # named sessions in the deduplicating store
        assert (terminal.home / "chats" / "store").is_dir()
    else:
        assert (terminal.home / "chats" / "alpha.seqkv").is_file()
    chat.send("/quit")
    chat.wait_exit()

    again = terminal("alpha", "--tier", tier, *TIER_ARGS)
    assert re.search(rf"\[resumed alpha: {second:,} tokens", again.screen())
    again.send("/info")
    screen = again.wait(lambda s: "restore  " in s, what="/info")
    assert re.search(rf"^tokens\s+{second:,}$", screen, re.M), screen
    restored_by = rf"{second} tokens from the store, 0 replayed" if tier == "snapshot" else "exact replay"
    assert re.search(rf"^restore\s+[\d.]+ s \({restored_by}\)$", screen, re.M), screen
    assert re.search(r"^raw\s+llama\.cpp state [\d,]+ bytes -> ratio [\d,.]+x$", screen, re.M), screen
    third = again.turn("a third one")  # the restored context continues
    assert third > second


def test_kill_between_turns_resumes_last_saved_turn(terminal):
    chat = terminal("beta", "--tier", "tokens", *TIER_ARGS)
    chat.turn("first")
    saved = chat.turn("second")
    os.kill(chat.pid, signal.SIGKILL)
    chat.wait_exit()

    again = terminal("beta", "--tier", "tokens", *TIER_ARGS)
    assert re.search(rf"\[resumed beta: {saved:,} tokens", again.screen()), again.screen()
    assert not list((terminal.home / "chats").glob(".*tmp*")), "a temporary file was left behind"


def test_ctrl_c_stops_the_answer_not_the_chat(terminal):
    n_ctx = 8192
    chat = terminal("gamma", "--tier", "tokens", "--ignore-eos", "--max-tokens", "0", "--n-ctx", str(n_ctx))
    chat.send("talk for a long time")
    chat.wait(lambda s: len(s.split("bot> ", 1)[-1].strip()) > 40, timeout=60, what="the answer to stream")
    chat.tmux("send-keys", "-t", chat.name, "C-c")
    screen = chat.wait_prompt(2, timeout=60)
    assert "[stopped]" in screen
    saved = int(SAVED.findall(screen)[-1])
    assert saved < n_ctx - 100, "the answer ran to the end of the context: Ctrl-C did not stop it"
    assert chat.alive()
    chat.send("/info")
    screen = chat.wait(lambda s: "save  " in s, what="/info")
    assert re.search(rf"^tokens\s+{saved:,}$", screen, re.M), screen
    chat.send("/quit")
    chat.wait_exit()
