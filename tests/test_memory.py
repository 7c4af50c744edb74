"""Resident memory: one copy of the weights, in the file's memory map or repacked."""

from __future__ import annotations

import json
import os
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
from lowbit.core.native import lib
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
out = {"base": base, "loaded": loaded, "used": used, "file": s.file_bytes, "state": s.state_bytes,
       "repacked": lib.lb_model_repacked_bytes(m._ptr)}
print(json.dumps(out))
"""

# Python objects of the tokenizer and metadata (vocabulary, merges) plus the
# C library's scratch; measured at about 50 MiB for SmolLM2's 49k-token vocabulary.
OVERHEAD_MIB = 80


def _probe(model: Path, **env: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, str(model), "2048"],
        capture_output=True, text=True, check=True, timeout=300, env=dict(os.environ, **env),
    )  # fmt: skip
    return json.loads(r.stdout)


def test_resident_memory_is_file_plus_cache_plus_overhead(smollm2_gguf: Path) -> None:
    m = _probe(smollm2_gguf)
    mib = 2**20
    grown_load = (m["loaded"] - m["base"]) / mib
    grown_used = (m["used"] - m["base"]) / mib
    budget = (m["file"] + m["state"]) / mib + OVERHEAD_MIB
    print(f"rss growth: after load {grown_load:.1f} MiB, after generating {grown_used:.1f} MiB; "
          f"file {m['file'] / mib:.1f} MiB, KV+scratch {m['state'] / mib:.1f} MiB")  # fmt: skip
    assert grown_used <= budget
    # Loading copies the matrices the library repacks (on x86; their file pages are
    # released as it goes) and nothing else: the rest is paged in by use, from the map.
    assert grown_load <= m["repacked"] / mib + OVERHEAD_MIB
    # Without repacking, loading reads no weights at all.
    plain = _probe(smollm2_gguf, LOWBIT_REPACK="0")
    assert plain["repacked"] == 0
    assert (plain["loaded"] - plain["base"]) / mib < plain["file"] / mib
