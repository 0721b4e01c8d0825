"""Builds the native codec core (native/) with cffi in API mode; all metadata lives in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
