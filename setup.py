"""Builds the native codec core (native/) with cffi in API mode and ships the wgpu shaders (native/*.wgsl) in the
package; all metadata lives in pyproject.toml."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithShader(build_py):
    """Copies native/*.wgsl beside seqkv_edge/codecs/segcode_wgpu.py (an editable install reads native/)."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "seqkv_edge" / "codecs"
            target.mkdir(parents=True, exist_ok=True)
            for shader in (Path(__file__).resolve().parent / "native").glob("*.wgsl"):
                shutil.copy2(shader, target / shader.name)


setup(cffi_modules=["native/build_native.py:ffibuilder"], cmdclass={"build_py": BuildPyWithShader})
