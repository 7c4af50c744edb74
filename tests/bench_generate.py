"""Decode speed of ``lowbit generate`` on SmolLM2 at Q8_0 and Q4_0 (a benchmark, not a test).

    python -m tests.bench_generate [--threads 2] [--tokens 128]

The Q8_0 and Q4_0 files are made from the Q4_1 test model with the ``gguf``
package's own reference encoders (decode, then encode every matrix), so they
are standard files that llama.cpp also reads. Prints one JSON line per file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from tests.conftest import fetch_smollm2, test_cache_dir
from tests.tiny_models import rewrite_gguf


def requantize(src: Path, dst: Path, qtype: QT) -> Path:
    """Write src with every 2-D weight re-encoded as qtype (1-D tensors stay F32)."""
    if dst.exists():
        return dst
    part = dst.with_suffix(".incomplete")

    def encode(t: gguf.ReaderTensor) -> tuple[np.ndarray, QT]:
        shape = tuple(int(d) for d in reversed(t.shape))
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        if len(shape) == 1:
            return values, QT.F32
        return gguf.quants.quantize(values, qtype), qtype

    file_type = {QT.Q8_0: 7, QT.Q4_0: 2}[qtype]  # llama.cpp's LLAMA_FTYPE_MOSTLY_* ids
    rewrite_gguf(src, part, encode, kv={"general.file_type": file_type})
    part.replace(dst)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    src = fetch_smollm2()
    files = {
        "Q4_1": src,
        "Q8_0": requantize(src, test_cache_dir() / "SmolLM2-135M-Instruct.Q8_0.gguf", QT.Q8_0),
        "Q4_0": requantize(src, test_cache_dir() / "SmolLM2-135M-Instruct.Q4_0.gguf", QT.Q4_0),
    }
    for name, path in files.items():
        cmd = [
            sys.executable, "-m", "lowbit.core.cli", "generate", str(path), "--prompt",
            "Write a short story about a lighthouse keeper.", "--chat", "--max-tokens", str(args.tokens),
            "--threads", str(args.threads), "--json",
        ]  # fmt: skip
        out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        keep = ("generated_tokens", "decode_tps", "prompt_tps", "ttft_s", "rss_after_load_mib", "rss_mib")
        print(
            json.dumps(
                {"type": name, "file_mib": round(path.stat().st_size / 2**20, 1)} | {k: out[k] for k in keep}
            )
        )


if __name__ == "__main__":
    main()
