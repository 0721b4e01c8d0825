"""cffi build script (API mode, out-of-line) for the native core, run by ``pip install``.

Every ``native/*.c`` is compiled into one extension, ``seqkv_edge._native``; every
``native/*.cdef`` holds the declarations Python may call. A component adds its own
``name.c`` / ``name.h`` / ``name.cdef`` and never needs to edit this file.
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = sorted(HERE.glob("*.c"))
CDEFS = sorted(HERE.glob("*.cdef"))
HEADERS = sorted(HERE.glob("*.h"))

ffibuilder = FFI()
ffibuilder.cdef("\n".join(path.read_text() for path in CDEFS))
ffibuilder.set_source(
    "seqkv_edge._native",
    "\n".join(f'#include "{path.name}"' for path in HEADERS),
    sources=[str(path.relative_to(HERE.parent)) for path in SOURCES],
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    # no contracted multiply-adds: results must not depend on the compiler (rope.c rounds as numpy does)
    extra_compile_args=["-O3", "-std=c11", "-fno-strict-aliasing", "-ffp-contract=off"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
