"""Resident memory: one copy of the weights, in the file's memory map or repacked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


# Loads the model, checks that the library repacked every matrix, closes the file's
# whole map to reads (PROT_NONE), then runs steps: any read of the map kills it.
_NO_MAP_READS = r"""
import ctypes, mmap, sys
import numpy as np
from lowbit.core.model import _LAYER_RE, _ROLES_GLOBAL, _ROLES_LAYER, Model
from lowbit.core.native import lib
m = Model.load(sys.argv[1], n_ctx=64, n_threads=2)
unpacked = []
for name, t in m.file.tensors.items():
    match = _LAYER_RE.match(name)
    role = _ROLES_LAYER.get(match.group(2)) if match else _ROLES_GLOBAL.get(name)
    layer = int(match.group(1)) if match else -1
    if len(t.shape) > 1 and not lib.lb_model_tensor_repacked(m._ptr, role, layer):
        unpacked.append(name)
if unpacked:
    print("unpacked", unpacked[:3])
    sys.exit(0)
base = next(iter(m.file.tensors.values())).data
while not isinstance(base, np.memmap):
    base = base.base
start = base.ctypes.data - base.offset  # the map starts at file offset 0
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
if libc.mprotect(start, m.file.size // mmap.PAGESIZE * mmap.PAGESIZE, 0) != 0:
    raise OSError(ctypes.get_errno(), "mprotect")
ids = m.tokenizer.encode("The history of the printing press begins")
m.forward(ids, 0)
for i in range(3):
    m.forward([ids[i]], len(ids) + i)
print("ok")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="closes the map with mprotect")
def test_steps_do_not_read_the_file_map(smollm2_gguf: Path) -> None:
    """With every matrix repacked, the library reads only its own copies, of the
    vectors (norms) too: a read of the map can map in whole page-cache folios around
    it, repacked matrices' pages included, which counted up to 73 MiB more resident
    memory on a Q8_0 SmolLM2."""
    r = subprocess.run(
        [sys.executable, "-c", _NO_MAP_READS, str(smollm2_gguf)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if r.stdout.startswith("unpacked"):
        pytest.skip(f"this path leaves matrices in the map: {r.stdout.strip()}")
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout, r.stderr[-2000:])
