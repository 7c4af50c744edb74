"""The native extension is built by cffi; everything else lives in pyproject.toml."""

from setuptools import setup

setup(
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    # cffi's module uses only the stable ABI: one wheel per platform serves Python 3.10+
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
