"""What a session file's JSON META must hold, checked once where the file is read.

Every later step (codecs, sizes, the tensor list, ``seqkv inspect``) indexes the META freely; checking
its shape here turns any damage into one CorruptDataError that names the field, instead of a
KeyError or TypeError deep inside a decoder. Unknown extra fields are allowed (newer writers).

A schema is a leaf check (a function), an object (dict: field -> schema; a name ending in ``?`` is
optional), an array (``[schema]``) or ``Nullable(schema)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import CorruptDataError

MAX_DEPTH = 16  # real META nests 4 levels deep (codecs.kv.weights.k[layer][head])
_MAX_INT = 1 << 62


@dataclass(frozen=True)
class Nullable:
    schema: Any


@dataclass(frozen=True)
class Leaf:
    check: Callable[[Any], bool]
    says: str  # what the value must be, for the message


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -_MAX_INT < value < _MAX_INT


COUNT = Leaf(lambda v: _is_int(v) and v >= 0, "a non-negative integer")
INT = Leaf(_is_int, "an integer")
NUMBER = Leaf(lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v), "a finite number")
STRING = Leaf(lambda v: isinstance(v, str), "a string")
BOOL = Leaf(lambda v: isinstance(v, bool), "true or false")
OBJECT = Leaf(lambda v: isinstance(v, dict), "an object")
ANY = Leaf(lambda v: True, "anything")

CODEC_CONFIG = {"id": STRING}  # the codec's own constructor checks the rest (codecs.get_codec)

SESSION_META = {
    "seqkv_edge": STRING,
    "created?": STRING,
    "model": {"fingerprint": STRING, "arch?": Nullable(STRING), "name?": STRING, "path?": STRING},
    "build?": OBJECT,
    "n_tokens": COUNT,
    "state_bytes": COUNT,
    "layout?": {"has_cell_ext?": Nullable(BOOL), "has_v?": Nullable(BOOL)},
    "rope?": Nullable({"type": STRING, "n_rot": COUNT, "freq_base": NUMBER, "freq_scale": NUMBER,
                       "head_dim_k": COUNT, "head_dim_v": COUNT, "n_head_kv": COUNT}),
    "cache": {"k_types": [STRING], "v_types": [STRING], "v_trans": BOOL},
    "codecs": {"kv": CODEC_CONFIG, "tokens": CODEC_CONFIG, "skeleton": CODEC_CONFIG},
    "profile?": Nullable(STRING),
    "tensors": [{"name": STRING, "ggml_type": INT, "token_major": BOOL, "n_cells": COUNT, "n_channels": COUNT,
                 "nbytes": COUNT}],
}


def check(value, schema, source: str, what: str = "META") -> Any:
    """``value`` if it fits ``schema`` (and nests at most MAX_DEPTH levels), else CorruptDataError."""
    if depth(value) > MAX_DEPTH:
        raise CorruptDataError(f"{source}: {what} nests deeper than {MAX_DEPTH} levels (damaged or not seqkv data)")
    problem = _problem(value, schema, what)
    if problem:
        raise CorruptDataError(f"{source}: {problem}")
    return value


def depth(value) -> int:
    """How many levels of arrays and objects ``value`` nests (without recursion)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            todo.extend((child, level + 1) for child in children)
    return deepest


def _problem(value, schema, where: str) -> str | None:
    if isinstance(schema, Nullable):
        return None if value is None else _problem(value, schema.schema, where)
    if isinstance(schema, Leaf):
        return None if schema.check(value) else f"{where} must be {schema.says}, found {_show(value)}"
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{where} must be an array, found {_show(value)}"
        for i, item in enumerate(value):
            if problem := _problem(item, schema[0], f"{where}[{i}]"):
                return problem
        return None
    if not isinstance(value, dict):
        return f"{where} must be an object, found {_show(value)}"
    for key, sub in schema.items():
        name, optional = key.rstrip("?"), key.endswith("?")
        if name not in value:
            if optional:
                continue
            return f"{where} has no field {name!r}"
        if problem := _problem(value[name], sub, f"{where}.{name}"):
            return problem
    return None


def _show(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
