"""English plain texts for demos, benchmarks and calibration.

Debian's base-files ship the licence texts under ``/usr/share/common-licenses``; the three the calibration reads
(Apache-2.0, GFDL-1.3, LGPL-2.1) also ship, byte for byte, with this package (``data/texts/``), so a machine
without them (macOS, other distributions) derives the same KV profiles and rate tables as a Debian one.
"""
from __future__ import annotations

from pathlib import Path

GPL3 = Path("/usr/share/common-licenses/GPL-3")  # Debian base-files: present on every Debian system
BUNDLED = Path(__file__).parent / "data" / "texts"

__all__ = ["GPL3", "BUNDLED", "default_text_path", "read_text", "text_path"]


def text_path(path) -> Path:
    """``path`` itself when it is a file, else the package's copy of a file of that name, else ``path`` (missing)."""
    path = Path(path)
    if path.is_file():
        return path
    bundled = BUNDLED / path.name
    return bundled if bundled.is_file() else path


def default_text_path() -> Path:
    if not GPL3.is_file():
        raise FileNotFoundError(f"{GPL3} not found; pass --text PATH with any English plain-text file")
    return GPL3


def read_text(path=None) -> tuple[str, str]:
    """Return ``(text, name)`` of ``path`` or of the default benchmark text (the GPL-3 license)."""
    path = Path(path) if path else default_text_path()
    return path.read_text(encoding="utf-8", errors="replace"), str(path)
