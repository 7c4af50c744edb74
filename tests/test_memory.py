"""Resident memory: the weights stay in the file's memory map, not in copies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Measured in a fresh process so the test suite's own allocations do not count.
_PROBE = r"""
import gc, json, sys
import psutil
import gguf, numpy, tokenizers, jinja2  # libraries, loaded before the baseline
from lowbit.core.engine import Engine
from lowbit.core.model import Model
proc = psutil.Process()
base = proc.memory_info().rss
m = Model.load(sys.argv[1], n_ctx=int(sys.argv[2]), n_threads=2)
gc.collect()
loaded = proc.memory_info().rss
ids = m.tokenizer.encode("The history of the printing press begins")
for _ in Engine(m).generate(ids, max_tokens=16):
    pass
used = proc.memory_info().rss
s = m.stats()
out = {"base": base, "loaded": loaded, "used": used, "file": s.file_bytes, "state": s.state_bytes}
print(json.dumps(out))
"""

# Python objects of the tokenizer and metadata (vocabulary, merges) plus the
# C library's scratch; measured at about 50 MiB for SmolLM2's 49k-token vocabulary.
OVERHEAD_MIB = 80


def test_resident_memory_is_file_plus_cache_plus_overhead(smollm2_gguf: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, str(smollm2_gguf), "2048"],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    m = json.loads(r.stdout)
    mib = 2**20
    grown_load = (m["loaded"] - m["base"]) / mib
    grown_used = (m["used"] - m["base"]) / mib
    budget = (m["file"] + m["state"]) / mib + OVERHEAD_MIB
    print(f"rss growth: after load {grown_load:.1f} MiB, after generating {grown_used:.1f} MiB; "
          f"file {m['file'] / mib:.1f} MiB, KV+scratch {m['state'] / mib:.1f} MiB")  # fmt: skip
    assert grown_used <= budget
    # Loading does not read the weights: they are paged in by use, from the map.
    assert grown_load < m["file"] / mib
