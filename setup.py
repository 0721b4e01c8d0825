"""Builds the native codec core (native/) with cffi in API mode and ships the wgpu shader (native/segcode.wgsl) in
the package; all metadata lives in pyproject.toml."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithShader(build_py):
    """Copies native/segcode.wgsl beside seqkv_edge/codecs/segcode_wgpu.py (an editable install reads native/)."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "seqkv_edge" / "codecs"
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(__file__).resolve().parent / "native" / "segcode.wgsl", target / "segcode.wgsl")


setup(cffi_modules=["native/build_native.py:ffibuilder"], cmdclass={"build_py": BuildPyWithShader})
