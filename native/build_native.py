"""cffi build script (API mode, out-of-line) for the native core, run by ``pip install``.

Every ``native/*.c`` is compiled into one extension, ``seqkv_edge._native``. Python's declarations come from the
public headers only (those whose comment says ``@cffi``): their prototypes and typedefs, and the integer constants
they and the local headers they include define (values taken from the compiled C). A component adds its own
``name.c`` / ``name.h`` and never needs to edit this file.
"""
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = sorted(HERE.glob("*.c"))
PUBLIC = sorted(p for p in HERE.glob("*.h") if "@cffi" in p.read_text())
_CONSTANT = re.compile(r"#define\s+([A-Z][A-Z0-9_]*)\s+(\S.*?)\s*$")


def _code(text: str) -> str:
    """``text`` without comments."""
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))


def _constants(header: Path) -> list[str]:
    """Integer constants ``header`` defines (object-like macros whose value is numbers, macro names and operators)."""
    out = []
    for line in _code(header.read_text()).splitlines():
        m = _CONSTANT.match(line.strip())
        if m and re.fullmatch(r"[-+()0-9A-Z_ <>|&*/a-fxuUlL]+", m.group(2)) and not m.group(1).endswith("_H"):
            out.append(m.group(1))
    return out


def _includes(header: Path) -> list[Path]:
    return [HERE / name for name in re.findall(r'#include\s+"([^"]+)"', header.read_text())]


def declarations() -> str:
    """The cdef: every public header's prototypes and typedefs, and the constants of it and its local includes."""
    names, code = [], []
    for header in PUBLIC:
        for source in [header, *_includes(header)]:
            names += [n for n in _constants(source) if n not in names]
        code.append("\n".join(line for line in _code(header.read_text()).splitlines()
                              if not line.lstrip().startswith("#")))
    return "\n".join([f"#define {name} ..." for name in names] + code)


ffibuilder = FFI()
ffibuilder.cdef(declarations())
ffibuilder.set_source(
    "seqkv_edge._native",
    "\n".join(f'#include "{path.name}"' for path in PUBLIC),
    sources=[str(path.relative_to(HERE.parent)) for path in SOURCES],
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    # no contracted multiply-adds: results must not depend on the compiler (rope.c rounds as numpy does)
    extra_compile_args=["-O3", "-std=c11", "-fno-strict-aliasing", "-ffp-contract=off"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
