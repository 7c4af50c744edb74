"""cffi (API mode) build of Lowbit's kernel library into ``lowbit.core._native``.

setuptools runs this through ``cffi_modules`` during ``pip install``. The cdef is
read from the public header between the LB_CDEF_BEGIN/END markers, so the header
stays the single description of the C API.

Run directly to build a variant into a folder, e.g. the sanitizer build used by
CI: ``python native/build_ffi.py --sanitize --outdir build/asan``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
INCLUDE = HERE / "include"
SOURCES = sorted(str(p.relative_to(HERE.parent)) for p in (HERE / "src").glob("*.c")) + sorted(
    str(p.relative_to(HERE.parent)) for p in (HERE / "kernels").glob("*.c")
)


def _cdef_text() -> str:
    header = (INCLUDE / "lowbit.h").read_text(encoding="utf-8")
    m = re.search(r"/\* LB_CDEF_BEGIN \*/(.*)/\* LB_CDEF_END \*/", header, re.S)
    if m is None:
        raise RuntimeError("lowbit.h lacks the LB_CDEF_BEGIN/END markers")
    # cffi's parser does not take comments inside enum bodies well; drop them all.
    text = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    return text


def _compile_args(sanitize: bool) -> tuple[list[str], list[str]]:
    if sys.platform == "win32":
        # MSVC: <stdatomic.h> needs the C11 atomics switch (Visual Studio 2022 17.5+); the
        # SIMD files need no flag, MSVC emits any instruction set's intrinsics
        return ["/O2", "/std:c11", "/experimental:c11atomics"], []
    cflags = ["-O2", "-std=gnu11", "-fno-strict-aliasing", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    ldflags = ["-lm", "-pthread"]
    cflags.append("-pthread")
    if sanitize:
        san = [
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer",
            "-g",
        ]
        cflags = [c for c in cflags if c != "-O2"] + ["-O1"] + san
        ldflags += san
    return cflags, ldflags


def make_builder(*, sanitize: bool = False, absolute: bool = False) -> FFI:
    """Return the FFI builder for the extension module.

    setuptools wants paths relative to the project root; a direct compile()
    runs from its own temporary folder and needs absolute ones.
    """
    builder = FFI()
    builder.cdef(_cdef_text())
    cflags, ldflags = _compile_args(sanitize)
    root = HERE.parent

    def path(p: Path) -> str:
        return str(p) if absolute else os.path.relpath(p, root)

    builder.set_source(
        "lowbit.core._native",
        '#include "lowbit.h"\n',
        sources=[path(root / s) for s in SOURCES],
        include_dirs=[path(INCLUDE), path(HERE / "src"), path(HERE / "kernels")],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    return builder


ffibuilder = make_builder(sanitize=os.environ.get("LOWBIT_SANITIZE") == "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sanitize", action="store_true", help="build with ASan and UBSan")
    parser.add_argument("--outdir", default="build/native", help="where to put the module")
    args = parser.parse_args()
    os.chdir(HERE.parent)
    out = Path(args.outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    built = make_builder(sanitize=args.sanitize, absolute=True).compile(tmpdir=str(out), verbose=False)
    print(built)


if __name__ == "__main__":
    main()
