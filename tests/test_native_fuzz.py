"""The C decoders under AddressSanitizer + UndefinedBehaviorSanitizer: every seed of fuzz/corpus, then 3,000
fixed-seed mutations per target (``make -C fuzz check``; ``make -C fuzz fuzz`` runs libFuzzer longer)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("cc") is None, reason="needs make and a C compiler")
def test_c_decoders_survive_mutated_streams_under_sanitizers():
    run = subprocess.run(["make", "-s", "-C", str(FUZZ), "check", "ITERATIONS=3000"], capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    reports = [line for line in run.stdout.splitlines() if "executions" in line]
    assert len(reports) == 3 and all("no sanitizer finding" in line for line in reports)
