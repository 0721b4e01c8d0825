"""Public-domain / freely licensed English text shipped by Debian, for demos and benchmarks."""
from __future__ import annotations

from pathlib import Path

GPL3 = Path("/usr/share/common-licenses/GPL-3")  # Debian base-files: present on every Debian system


def default_text_path() -> Path:
    if not GPL3.is_file():
        raise FileNotFoundError(f"{GPL3} not found; pass --text PATH with any English plain-text file")
    return GPL3


def read_text(path=None) -> tuple[str, str]:
    """Return ``(text, name)`` of ``path`` or of the default benchmark text (the GPL-3 license)."""
    path = Path(path) if path else default_text_path()
    return path.read_text(encoding="utf-8", errors="replace"), str(path)
