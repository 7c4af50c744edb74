"""The quantizer: full-precision model in, standard GGUF out.

Presets are per-tensor mixtures, written down in :func:`tensor_type` with the
same rules llama.cpp applies (so a Lowbit Q4_K_M has the layout a llama.cpp
Q4_K_M has). Methods:

- ``rtn``: each block's scales from the block alone (round to nearest with the
  reference scale search); for the types that ``gguf.quants`` implements the bytes
  equal its bytes.
- ``imatrix``: the model runs on a calibration text, and each column's error is
  weighted by the mean square of the activation that multiplies it when the C
  encoder searches block scales and mins.
- ``gptq``: as ``imatrix``, and each matrix is quantized a block of columns at a
  time, the error of every block compensated in the columns still to come
  through the full Gram matrix of the matrix's input (see ``gptq.py``). Needs
  PyTorch.

The job is safe to interrupt: it checks free disk space first, writes to a
temporary name beside the output, fsyncs, and renames only when complete; a
cancel or an error removes the temporary file. The source is only read.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as QT

from .convert import KV, SourceModel, SourceTensor, open_source
from .errors import DiskFullError, QuantizeError
from .quants import row_bytes

ProgressFn = Callable[[str, float, "float | None", str], None]

# Preset name -> (default type of the matrices, GGUF general.file_type id).
PRESETS: dict[str, tuple[QT, int]] = {
    "F32": (QT.F32, 0),
    "F16": (QT.F16, 1),
    "BF16": (QT.BF16, 32),
    "Q8_0": (QT.Q8_0, 7),
    "Q6_K": (QT.Q6_K, 18),
    "Q5_K_M": (QT.Q5_K, 17),
    "Q5_K_S": (QT.Q5_K, 16),
    "Q5_1": (QT.Q5_1, 9),
    "Q5_0": (QT.Q5_0, 8),
    "Q4_K_M": (QT.Q4_K, 15),
    "Q4_K_S": (QT.Q4_K, 14),
    "Q4_1": (QT.Q4_1, 3),
    "Q4_0": (QT.Q4_0, 2),
    "IQ4_NL": (QT.IQ4_NL, 25),
    "Q3_K_M": (QT.Q3_K, 12),
    "Q2_K": (QT.Q2_K, 10),
}
QUANT_PRESETS = [p for p in PRESETS if p not in ("F32", "F16", "BF16")]
METHODS = ("rtn", "imatrix", "gptq")
SUPER_BLOCK = 256

# A K-type whose rows are not whole super-blocks falls back to a block-32 type of
# at least as many bits, as llama.cpp does.
_FALLBACK = {
    QT.Q2_K: QT.Q4_0,
    QT.Q3_K: QT.Q4_0,
    QT.Q4_K: QT.Q5_0,
    QT.Q5_K: QT.Q5_1,
    QT.Q6_K: QT.Q8_0,
}
_K_TYPES = frozenset(_FALLBACK)
# Candidate types of the size-budget search, smallest first.
BUDGET_TYPES = [QT.Q2_K, QT.Q3_K, QT.IQ4_NL, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q8_0]


def bits_per_weight(qtype: QT) -> float:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return 8.0 * size / block


def _more_bits(i: int, n: int) -> bool:
    # llama.cpp's use_more_bits: the first and last eighth of the layers, and every
    # third layer between, get the larger type in the _M mixtures.
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def is_matrix(t: SourceTensor) -> bool:
    """Whether a tensor is quantized at all (norms, biases and RoPE factors stay F32)."""
    return len(t.shape) == 2 and t.name.endswith(".weight")


def tensor_type(preset: str, t: SourceTensor, *, n_layer: int, n_gqa: int, has_output: bool) -> QT:
    """The type a preset gives one tensor. These are llama.cpp's mixture rules.

    - 1-D tensors (norms, biases, RoPE factors) stay F32.
    - The output matrix (or the token embeddings when they double as the output)
      gets Q6_K, or Q8_0 when its rows are not whole super-blocks, except in the
      8-bit and float presets.
    - ``attn_v``: Q2_K → Q3_K (Q4_K when 4+ query heads share a KV head);
      Q3_K_M → Q5_K for the first two layers, else Q4_K; IQ4_NL → Q5_K with 4+ GQA;
      Q4_K_M/Q5_K_M → Q6_K on the "more bits" layers; Q4_K_S → Q5_K on the first 4.
    - ``ffn_down``: Q2_K → Q3_K; Q3_K_M → Q5_K in the first 1/16 of layers, else
      Q4_K; Q4_K_M/Q5_K_M → Q6_K on the "more bits" layers; Q4_K_S and IQ4_NL →
      Q5_K in the first 1/8.
    - ``attn_output``: Q2_K → Q3_K; Q3_K_M → Q4_K.
    - Then a K-type on rows that are not whole super-blocks of 256 falls back to
      Q4_0 (Q2_K, Q3_K), Q5_0 (Q4_K), Q5_1 (Q5_K) or Q8_0 (Q6_K).
    """
    if preset not in PRESETS:
        raise QuantizeError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[preset][0]
    if not is_matrix(t):
        return QT.F32
    if base in (QT.F32, QT.F16, QT.BF16):
        return base
    n_in = t.shape[1]
    kind = t.kind
    new = base
    is_output = t.name == "output.weight" or (not has_output and t.name == "token_embd.weight")
    if is_output:
        if n_in % SUPER_BLOCK:
            new = QT.Q8_0
        elif base != QT.Q8_0:
            new = QT.Q6_K
    elif kind == "attn_v.weight":
        if preset == "Q2_K":
            new = QT.Q4_K if n_gqa >= 4 else QT.Q3_K
        elif preset == "Q3_K_M":
            new = QT.Q5_K if t.layer < 2 else QT.Q4_K
        elif preset == "IQ4_NL" and n_gqa >= 4:
            new = QT.Q5_K
        elif preset in ("Q4_K_M", "Q5_K_M") and _more_bits(t.layer, n_layer):
            new = QT.Q6_K
        elif preset == "Q4_K_S" and t.layer < 4:
            new = QT.Q5_K
    elif kind == "ffn_down.weight":
        if preset == "Q2_K":
            new = QT.Q3_K
        elif preset == "Q3_K_M":
            new = QT.Q5_K if t.layer < n_layer // 16 else QT.Q4_K
        elif preset in ("Q4_K_M", "Q5_K_M") and _more_bits(t.layer, n_layer):
            new = QT.Q6_K
        elif preset in ("Q4_K_S", "IQ4_NL") and t.layer < n_layer // 8:
            new = QT.Q5_K
    elif kind == "attn_output.weight":
        if preset == "Q2_K":
            new = QT.Q3_K
        elif preset == "Q3_K_M":
            new = QT.Q4_K
    return fallback_type(new, n_in)


def fallback_type(qtype: QT, n_in: int) -> QT:
    """The type actually usable on rows of ``n_in`` elements."""
    if qtype in _K_TYPES and n_in % SUPER_BLOCK:
        return _FALLBACK[qtype]
    return qtype


def tensor_bytes(qtype: QT, shape: tuple[int, ...]) -> int:
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return rows * row_bytes(qtype, shape[-1])


@dataclass(frozen=True)
class QuantizePlan:
    """The type of every tensor and the resulting data size."""

    types: dict[str, QT]
    data_bytes: int
    n_weights: int

    @property
    def bpw(self) -> float:
        return 8.0 * self.data_bytes / max(1, self.n_weights)


def plan_preset(source: SourceModel, preset: str) -> QuantizePlan:
    """Per-tensor types of a preset for this model."""
    has_output = "output.weight" in source.tensors
    n_gqa = source.n_head // source.n_head_kv
    types = {
        n: tensor_type(preset, t, n_layer=source.n_layer, n_gqa=n_gqa, has_output=has_output)
        for n, t in source.tensors.items()
    }
    return _plan(source, types)


def _plan(source: SourceModel, types: dict[str, QT]) -> QuantizePlan:
    size = sum(tensor_bytes(types[n], t.shape) for n, t in source.tensors.items())
    return QuantizePlan(types, size, sum(t.n_elements for t in source.tensors.values()))


@dataclass(frozen=True)
class QuantizeResult:
    """What a finished quantization produced."""

    path: Path
    preset: str
    method: str
    file_bytes: int
    bpw: float
    type_counts: dict[str, int]
    seconds: float
    calibration_tokens: int = 0
    calibration_sha256: str = ""


def _is_cancelled(cancel: Any) -> None:
    if cancel is not None:
        cancel.raise_if_cancelled()


def parse_budget(text: str, n_weights: int) -> int:
    """A size budget as data bytes: "450MiB", "0.5GiB", "4.5bpw" or a plain MiB number.

    Raises:
        QuantizeError: The text is not a size.
    """
    s = text.strip().lower().replace(" ", "")
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 1000, "mb": 10**6, "gb": 10**9}
    try:
        if s.endswith("bpw"):
            return int(float(s[:-3]) * n_weights / 8)
        for u, mult in units.items():
            if s.endswith(u):
                return int(float(s[: -len(u)]) * mult)
        return int(float(s) * (1 << 20))
    except ValueError:
        raise QuantizeError(
            f"cannot read the size budget {text!r}: use e.g. 450MiB, 0.5GiB or 4.5bpw"
        ) from None


def quantize_model(
    src: str | os.PathLike[str] | SourceModel,
    dst: str | os.PathLike[str],
    *,
    preset: str,
    method: str = "rtn",
    calibration: str | os.PathLike[str] | None = None,
    budget: str | None = None,
    n_threads: int | None = None,
    progress: ProgressFn | None = None,
    cancel: Any = None,
    overwrite: bool = False,
) -> QuantizeResult:
    """Quantize a full-precision model to a GGUF file.

    Args:
        src: A Hugging Face folder, an F32/F16/BF16 GGUF, or an open source model.
        dst: The GGUF file to write.
        preset: One of :data:`PRESETS` (the type mixture; with ``budget``, the
            starting point and the label written into the file).
        method: "rtn", "imatrix" or "gptq".
        calibration: Text file for calibration (default: the built-in text).
        budget: Size budget of the tensor data ("450MiB", "4.5bpw"); per-tensor
            types are then chosen by measured sensitivity, never over the budget.
        n_threads: Encoder threads (default: physical cores).
        progress: Called with (stage, done, total, message).
        cancel: An object with ``raise_if_cancelled()`` (e.g. engine.CancelToken).
        overwrite: Replace an existing ``dst``.

    Returns:
        What was written.

    Raises:
        QuantizeError: Unknown preset or method, a budget below the smallest mixture, or
            ``gptq`` without PyTorch installed.
        FileExistsError: ``dst`` exists and ``overwrite`` is false.
        DiskFullError: Not enough free space for the output.
        CancelledError: Cancelled; no output is left behind.
        ModelNotFoundError, ModelFormatError, UnsupportedModelError, UnsafeCheckpointError,
        TokenizerError: The source cannot be used.
        OSError: Writing failed; no output is left behind.
    """
    from .model import default_threads

    t0 = time.monotonic()
    if preset not in PRESETS:
        raise QuantizeError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if method not in METHODS:
        raise QuantizeError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "gptq":
        from .gptq import require_torch

        require_torch()  # before any work
    out = Path(dst)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists")
    threads = n_threads or default_threads()
    own = not isinstance(src, SourceModel)
    source = open_source(src) if own else src
    try:
        assert isinstance(source, SourceModel)
        if Path(source.path).resolve() == out.resolve():
            raise QuantizeError("the output would overwrite the source model")
        importance: dict[str, np.ndarray] = {}
        calib = None
        if method == "imatrix" or budget is not None:
            calib, importance = calibrate(source, calibration, progress, cancel)
        gptq = None
        if method == "gptq":
            from .gptq import HessianStream

            calib = calib or _load_calibration(source, calibration)
            gptq = HessianStream(source, calib.tokens, cancel=cancel)
        plan = plan_preset(source, preset)
        if budget is not None:
            from .mixture import plan_budget

            limit = parse_budget(budget, plan.n_weights)
            plan = plan_budget(source, limit, importance, n_threads=threads, progress=progress, cancel=cancel)
        kv = _output_kv(source, preset, method if budget is None else f"{method}+budget", calib)
        _check_disk(out, plan.data_bytes + _kv_bytes(kv))
        imp = importance if method == "imatrix" else {}
        _write_gguf(source, out, plan, kv, imp, threads, progress, cancel, gptq)
    finally:
        if own:
            source.close()
    counts = Counter(plan.types[n].name for n in plan.types)
    return QuantizeResult(
        path=out,
        preset=preset,
        method=method,
        file_bytes=out.stat().st_size,
        bpw=plan.bpw,
        type_counts=dict(counts),
        seconds=time.monotonic() - t0,
        calibration_tokens=len(calib.tokens) if calib else 0,
        calibration_sha256=calib.sha256 if calib else "",
    )


def _load_calibration(source: SourceModel, calibration: Any) -> Any:
    from .calibrate import load_calibration
    from .tokenizer import Tokenizer

    tok = Tokenizer.from_gguf_metadata(source.metadata())
    return load_calibration(calibration, lambda s: tok.encode(s, add_bos=False, parse_special=False))


def calibrate(
    source: SourceModel, calibration: Any, progress: ProgressFn | None, cancel: Any
) -> tuple[Any, dict[str, np.ndarray]]:
    """Run the calibration text (None: the built-in one) through ``source``.

    Returns:
        The calibration text's identity (for provenance) and each matrix's input importance.
    """
    from .calibrate import collect_importance

    calib = _load_calibration(source, calibration)
    importance = dict(collect_importance(source, calib.tokens, progress=progress, cancel=cancel))
    return calib, importance


def _output_kv(source: SourceModel, preset: str, method: str, calib: Any) -> list[KV]:
    drop = ("general.file_type", "general.quantization_version", "lowbit.")
    kv = [k for k in source.kv if not k.key.startswith(drop)]
    kv.append(KV("general.file_type", PRESETS[preset][1], 4))
    kv.append(KV("general.quantization_version", 2, 4))
    kv.append(KV("lowbit.quantize.preset", preset, 8))
    kv.append(KV("lowbit.quantize.method", method, 8))
    if calib is not None:
        kv.append(KV("lowbit.quantize.calibration.source", calib.source, 8))
        kv.append(KV("lowbit.quantize.calibration.sha256", calib.sha256, 8))
        kv.append(KV("lowbit.quantize.calibration.tokens", len(calib.tokens), 4))
    return kv


def _kv_bytes(kv: list[KV]) -> int:
    total = 0
    for k in kv:
        v = k.value
        total += len(k.key) + 16
        if isinstance(v, list):
            total += sum(len(str(x).encode("utf-8")) + 8 for x in v)
        else:
            total += len(str(v).encode("utf-8")) + 8
    return total


def _check_disk(out: Path, need: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    margin = 16 << 20
    if free < need + margin:
        raise DiskFullError(
            f"not enough disk space for {out.name}: it needs about {(need + margin) / 2**20:.0f} MiB "
            f"and {out.parent} has {free / 2**20:.0f} MiB free"
        )


def _write_gguf(
    source: SourceModel,
    out: Path,
    plan: QuantizePlan,
    kv: list[KV],
    importance: dict[str, np.ndarray],
    threads: int,
    progress: ProgressFn | None,
    cancel: Any,
    gptq: Any = None,
) -> None:
    import gguf

    from .quants import quantize_rows

    tmp = out.with_name(f".{out.name}.{os.getpid()}.incomplete")
    writer = gguf.GGUFWriter(tmp, source.arch)
    writer.kv_data[0].clear()  # the architecture comes from the source's own keys
    try:
        for k in kv:
            sub = gguf.GGUFValueType(k.sub_type) if k.sub_type is not None else None
            writer.add_key_value(k.key, k.value, gguf.GGUFValueType(k.vtype), sub_type=sub)
        names = list(source.tensors)
        if gptq is not None:
            # Layer by layer, the rest last: GPTQ calibrates one layer at a time as
            # its tensors come up, and the output's statistics come after the last layer.
            names.sort(key=lambda n: (0, int(n.split(".")[1])) if n.startswith("blk.") else (1, 0))
        for name in names:
            t = source.tensors[name]
            qt = plan.types[name]
            # gguf-py takes the shape of the raw bytes: rows keep their dimensions.
            byte_shape = (*t.shape[:-1], row_bytes(qt, t.shape[-1]))
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), tensor_bytes(qt, t.shape), qt)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        done = 0
        for i, name in enumerate(names):
            _is_cancelled(cancel)
            t = source.tensors[name]
            qt = plan.types[name]
            if progress is not None:
                progress("quantize", done, plan.data_bytes, f"{name} → {qt.name} ({i + 1}/{len(names)})")
            w = source.load(name)
            w2 = w.reshape(-1, t.shape[-1])
            if gptq is not None:
                data = gptq.encode(name, w2, int(qt), n_threads=threads)
            else:
                data = quantize_rows(int(qt), w2, importance=importance.get(name), n_threads=threads)
            writer.write_tensor_data(data.reshape(-1))
            done += data.nbytes
        writer.close()
        _is_cancelled(cancel)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(out)
        if progress is not None:
            progress("quantize", plan.data_bytes, plan.data_bytes, "done")
    except OSError as e:
        if getattr(e, "errno", None) == 28:  # ENOSPC
            raise DiskFullError(f"the disk filled up while writing {out.name}") from e
        raise
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
