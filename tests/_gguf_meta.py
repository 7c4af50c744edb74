"""Test helper: the SmolLM2 GGUF metadata as plain values.

Test modules that need it declare ``pytest_plugins = ("tests._gguf_meta",)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import pytest

from tests.gguf_reference import read_metadata


@pytest.fixture(scope="session")
def smollm2_metadata(smollm2_gguf: Path) -> dict[str, Any]:
    """Every key-value field of the SmolLM2 test model, read once per session."""
    return read_metadata(gguf.GGUFReader(smollm2_gguf))
