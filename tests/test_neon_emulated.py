"""The arm64 NEON path, checked on an emulated CPU.

test_kernels_isa.py checks every path the machine can run; an x86 machine cannot run
NEON. This builds the library's C sources for arm64 together with
tests/native/neon_check.c (a cross compiler, statically linked) and runs the result
under qemu-aarch64 user emulation, whose default CPU has the dot-product extension.
The program compares the NEON kernels with the scalar reference as
test_kernels_isa.py does (see its header) and prints one line per check.

Needs Debian's gcc-aarch64-linux-gnu and qemu-user (.ci/run installs both); without
them the test is skipped and says which is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"


@pytest.fixture(scope="module")
def neon_check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [tool for tool in (CC, QEMU) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: gcc-aarch64-linux-gnu, qemu-user)")
    exe = tmp_path_factory.mktemp("neon") / "neon_check"
    native = ROOT / "native"
    sources = sorted((native / "src").glob("*.c")) + sorted((native / "kernels").glob("*.c"))
    cmd = [
        CC, "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror", "-static",
        f"-I{native / 'include'}", f"-I{native / 'src'}", f"-I{native / 'kernels'}",
        *map(str, sources), str(ROOT / "tests" / "native" / "neon_check.c"),
        "-o", str(exe), "-lm", "-lpthread",
    ]  # fmt: skip
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    return exe


def test_neon_kernels_match_the_scalar_reference(neon_check: Path) -> None:
    run = subprocess.run([QEMU, str(neon_check)], capture_output=True, text=True, timeout=600)
    lines = run.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert run.returncode == 0 and not failed, run.stdout + run.stderr
    # every weight type (4 inputs each), the activation encoders (5 inputs, Q16 6), the
    # attention entries
    assert sum(line.startswith("ok") for line in lines) == 14 * 4 + 3 * 5 + 6 + 3, run.stdout
    assert lines[-1] == "OK: 0 failed"
