"""seqkv_edge: compress llama.cpp KV caches as sequences — bit-exact session save/restore.

>>> from seqkv_edge import SeqKV
>>> SeqKV(kv="lossless").kv
'lossless'
"""
__version__ = "0.1.0"

from .config import SeqKV  # noqa: E402
from .errors import (
    CorruptDataError,
    ModelMismatchError,
    ModelNotInstalledError,
    ScheduleUnavailableError,
    SeqKVError,
    SessionCancelled,
    StoreFullError,
    StoreUnavailableError,
    UnsupportedStateError,
)


def __getattr__(name):
    # llama_cpp loads a large shared library: import it only when the Llama class is wanted
    if name == "Llama":
        from .llama import Llama

        return Llama
    raise AttributeError(f"module 'seqkv_edge' has no attribute {name!r}")


__all__ = [
    "Llama",
    "SeqKV",
    "SeqKVError",
    "CorruptDataError",
    "ModelMismatchError",
    "ModelNotInstalledError",
    "ScheduleUnavailableError",
    "SessionCancelled",
    "UnsupportedStateError",
    "StoreFullError",
    "StoreUnavailableError",
    "__version__",
]
