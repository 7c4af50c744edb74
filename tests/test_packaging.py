"""The Linux packages work on a machine without the project's Python environment.

Not in the default run (it builds both packages, about three minutes on two cores):

    pip install -e ".[test,package]"
    python -m pytest -m packaging tests/test_packaging.py -s

Needs Debian's dpkg-deb, lintian, squashfs-tools, qemu-user, and for the AppImage
runtime libsquashfuse-dev, libfuse3-dev and the static compression libraries (see README).
Set ``LOWBIT_PACKAGES=DIR`` to test packages already built into DIR instead.

Every packaged program runs under ``env -i`` with a scratch HOME: no virtual
environment, no PYTHONPATH, nothing of the source tree. Sizes and start-up times are
printed (``-s`` shows them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "packaging" / "linux" / "build.py"


def _report(text: str) -> None:
    sys.__stdout__.write(f"\n[packaging] {text}\n")
    sys.__stdout__.flush()


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    given = os.environ.get("LOWBIT_PACKAGES")
    out = Path(given).resolve() if given else tmp_path_factory.mktemp("packages")
    if not given:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(BUILD), "--out", str(out)], check=True, cwd=ROOT)
        _report(f"built both packages in {time.perf_counter() - t0:.0f} s")
    debs = sorted(out.glob("lowbit_*.deb"))
    images = sorted(out.glob("Lowbit-*.AppImage"))
    assert len(debs) == 1 and len(images) == 1, f"expected one .deb and one AppImage in {out}"
    for p in (debs[0], images[0]):
        _report(f"{p.name}: {p.stat().st_size / 2**20:.1f} MiB")
    return {"deb": debs[0], "appimage": images[0]}


def _smoke_test() -> ModuleType:
    spec = importlib.util.spec_from_file_location("smoke_test", ROOT / "packaging" / "smoke_test.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


smoke = _smoke_test()


@pytest.fixture(scope="module")
def reference_tokens(smollm2_gguf: Path) -> list[int]:
    """The source tree's engine on the same prompt: packaging must not change a token."""
    from lowbit.core.selfcheck import generate_check

    return generate_check(smollm2_gguf, 16)["tokens"]


def _check_program(
    program: Path, home: Path, model: Path, reference: list[int], label: str, **env: str
) -> None:
    result = smoke.check(program, model, home, 16, **env)
    assert result["tokens"] == reference
    _report(
        f"{label}: window shown {result['window_shown_s']:.2f} s after the app process started; "
        f"the whole start-show-close run took {result['start_show_close_s']:.2f} s"
    )


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def test_deb_has_no_lintian_errors(packages: dict[str, Path]) -> None:
    if shutil.which("lintian") is None:
        pytest.fail("lintian is missing: apt-get install lintian")
    out = subprocess.run(
        ["lintian", "--tag-display-limit", "0", str(packages["deb"])], capture_output=True, text=True
    )
    errors = [line for line in out.stdout.splitlines() if line.startswith("E:")]
    assert not errors, "\n".join(errors)
    assert out.returncode in (0, 2), out.stderr  # 2: warnings only


def test_deb_installs_desktop_integration(packages: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(packages["deb"]), str(root)], check=True)
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(packages["deb"]), "Package", "Depends"], capture_output=True, text=True
    ).stdout
    assert "Package: lowbit" in fields and "libc6 (>= 2." in fields
    desktop = (root / "usr/share/applications/lowbit.desktop").read_text()
    assert "MimeType=application/x-gguf;" in desktop and "Exec=lowbit %f" in desktop
    if shutil.which("desktop-file-validate"):
        subprocess.run(
            ["desktop-file-validate", str(root / "usr/share/applications/lowbit.desktop")], check=True
        )
    mime = (root / "usr/share/mime/packages/lowbit.xml").read_text()
    assert 'type="application/x-gguf"' in mime and 'pattern="*.gguf"' in mime
    for size in (16, 48, 256, 512):
        assert (root / f"usr/share/icons/hicolor/{size}x{size}/apps/lowbit.png").is_file()
    assert (root / "usr/share/icons/hicolor/scalable/apps/lowbit.svg").is_file()
    assert os.readlink(root / "usr/bin/lowbit") == "../lib/lowbit/lowbit"


def test_deb_runs_without_a_python_environment(
    packages: dict[str, Path], smollm2_gguf: Path, reference_tokens: list[int], tmp_path: Path, home: Path
) -> None:
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(packages["deb"]), str(root)], check=True)
    _check_program(root / "usr/bin/lowbit", home, smollm2_gguf, reference_tokens, ".deb")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an older x86-64 CPU")
def test_packaged_kernels_run_on_a_cpu_without_avx(
    packages: dict[str, Path], smollm2_gguf: Path, reference_tokens: list[int], tmp_path: Path
) -> None:
    """The package's native library on an emulated Nehalem (SSE4.2, no AVX): the scalar
    path, the same tokens, and never "illegal instruction"."""
    qemu = shutil.which("qemu-x86_64")
    assert qemu, "qemu-x86_64 is missing: apt-get install qemu-user"
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(packages["deb"]), str(root)], check=True)
    (native,) = (root / "usr/lib/lowbit/_internal/lowbit/core").glob("_native*.so")
    code = (
        "import json; from lowbit.core import native; from lowbit.core.selfcheck import generate_check; "
        f"r = generate_check({str(smollm2_gguf)!r}, 4, n_threads=1); "
        "print(json.dumps({'isa': native.isa(), 'tokens': r['tokens']}))"
    )
    # the interpreter runs emulated too; only the kernel library comes from the package
    env = dict(os.environ, LOWBIT_NATIVE_PATH=str(native))
    env.pop("LOWBIT_ISA", None)
    out = subprocess.run(
        [qemu, "-cpu", "Nehalem", sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"isa": "scalar", "tokens": reference_tokens[:4]}


def test_appimage_contents_run(
    packages: dict[str, Path], smollm2_gguf: Path, reference_tokens: list[int], tmp_path: Path, home: Path
) -> None:
    out = subprocess.run(
        [str(packages["appimage"]), "--appimage-extract"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    appdir = tmp_path / "squashfs-root"
    assert (appdir / "lowbit.desktop").is_file() and (appdir / ".DirIcon").exists()
    _check_program(appdir / "AppRun", home, smollm2_gguf, reference_tokens, "AppImage contents")


def test_appimage_runs_as_one_file(
    packages: dict[str, Path], smollm2_gguf: Path, reference_tokens: list[int], home: Path
) -> None:
    # extract-and-run works everywhere; a FUSE mount only where /dev/fuse is usable
    _check_program(
        packages["appimage"], home, smollm2_gguf, reference_tokens, "AppImage", APPIMAGE_EXTRACT_AND_RUN="1"
    )
    if os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fusermount3"):
        _check_program(packages["appimage"], home, smollm2_gguf, reference_tokens, "AppImage (FUSE)")
    assert not list(Path("/tmp").glob(".mount_Lowbit*")), "a mount was left behind"


def test_truncated_appimage_fails_cleanly(packages: dict[str, Path], tmp_path: Path) -> None:
    data = packages["appimage"].read_bytes()
    cut = tmp_path / "cut.AppImage"
    cut.write_bytes(data[: len(data) // 2])
    cut.chmod(0o755)
    out = subprocess.run([str(cut), "self-check"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0
    assert "truncated" in out.stderr


def test_appimage_runtime_self_test() -> None:
    """The runtime's own checks: offset, extraction, FUSE run, fallback, hostile images."""
    out = subprocess.run(
        ["bash", str(ROOT / "packaging/linux/runtime/test_runtime.sh")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " 0 failed" in out.stdout
