"""The Hugging Face Hub: search, model details, downloads and log-in.

Everything goes through ``huggingface_hub``: ``HfApi`` for search and model info,
``get_hf_file_metadata`` for each file's ETag, size and commit, and its ``http_get``
for the transfer itself (Range requests, retries on a dropped connection). Lowbit adds
what a desktop app needs around it:

- partial files that survive an app restart: ``hf_hub_download`` deletes its partial
  file when a download fails, so Lowbit keeps its own ``.incomplete`` file per file
  and ETag in the destination folder and hands it to ``http_get`` to resume with a
  Range request;
- a check of the content against the Hub's checksum (SHA-256 of LFS files, the git
  blob SHA-1 of the others), which ``huggingface_hub`` does not do for plain HTTP;
- a free-disk check over all files before the first byte is written;
- progress in bytes, speed and ETA per file and in total, and Cancel;
- errors a person understands: offline, gated (log in), not found.

The Hub address is ``HF_ENDPOINT`` as read when this module's functions run (not only
when ``huggingface_hub`` was imported), so a test or a mirror can change it. Downloads
never use the Xet protocol: the ``/resolve`` URL serves the same bytes over HTTP, and
only that path resumes across restarts.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    CancelledError,
    DiskFullError,
    DownloadError,
    GatedModelError,
    HubError,
    LowbitError,
    OfflineError,
    RepoNotFoundError,
    UnsafeCheckpointError,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float, "float | None", str], None]

DEFAULT_ENDPOINT = "https://huggingface.co"
# Hugging Face architectures Lowbit converts and runs, and the GGUF names they become.
HF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
SORT_KEYS = {"downloads": "downloads", "likes": "likes", "created": "created_at", "modified": "last_modified"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Kept free after a download, so that finishing one does not leave the disk full.
DISK_RESERVE_BYTES = 64 * 2**20
PARTIAL_DIR = ".lowbit-partial"
MANIFEST = ".lowbit-download.json"

_CONFIG_FILES = ("config.json", "generation_config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
_QUANT_RE = re.compile(r"(?i)(?:^|[-_.])(I?Q\d(?:_[0-9A-Z]+)*|TQ\d_0|BF16|F16|F32)(?=[-_.])")
_SHARD_RE = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$")
_SEARCH_EXPAND = [
    "config", "gguf", "safetensors", "gated", "downloads", "likes", "tags", "pipeline_tag",
    "createdAt", "lastModified", "siblings", "sha", "private",
]  # fmt: skip


# -- data --------------------------------------------------------------------------


@dataclass(frozen=True)
class HubFile:
    """One file of a repository."""

    name: str
    size: int | None = None
    sha256: str | None = None  # LFS files
    blob_id: str | None = None  # git blob SHA-1
    kind: str = "other"  # gguf, safetensors, index, config, tokenizer, pickle, other
    quant_type: str | None = None  # GGUF files: from the file name, e.g. "Q4_K_M"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class HubModel:
    """A model repository as the search and the model page show it."""

    repo_id: str
    sha: str | None = None
    architecture: str | None = None
    supported: bool = False
    n_params: int | None = None
    license: str | None = None
    gated: bool = False
    private: bool = False
    downloads: int | None = None
    likes: int | None = None
    created_at: str | None = None
    last_modified: str | None = None
    pipeline_tag: str | None = None
    is_gguf: bool = False
    tags: tuple[str, ...] = ()
    files: tuple[HubFile, ...] | None = None  # None: not fetched

    @property
    def gguf_files(self) -> list[HubFile]:
        return [f for f in self.files or () if f.kind == "gguf"]

    @property
    def total_size(self) -> int | None:
        if self.files is None or any(f.size is None for f in self.files):
            return None
        return sum(f.size or 0 for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("files", "tags")}
        d["tags"] = list(self.tags)
        if self.files is not None:
            d["files"] = [f.to_dict() for f in self.files]
        return d


@dataclass(frozen=True)
class DownloadProgress:
    """Progress of a download: the current file and the total, with speed and ETA."""

    repo_id: str
    file: str
    file_done: int
    file_total: int | None
    done: int
    total: int
    speed_bps: float  # bytes per second over the last few seconds
    eta_s: float | None
    files_done: int
    files_total: int


@dataclass(frozen=True)
class DownloadResult:
    """What a finished download left on disk."""

    repo_id: str
    revision: str
    folder: Path
    files: tuple[Path, ...]
    bytes_downloaded: int
    bytes_resumed: int  # bytes that were already on disk from an interrupted download
    seconds: float
    details: HubModel | None = field(default=None, compare=False)


# -- endpoint, token, network --------------------------------------------------------


def endpoint() -> str:
    """The Hub address: ``HF_ENDPOINT`` now, else huggingface_hub's own default."""
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    from huggingface_hub import constants

    return str(getattr(constants, "ENDPOINT", DEFAULT_ENDPOINT)).rstrip("/")


def is_offline_mode() -> bool:
    """True when ``HF_HUB_OFFLINE`` (set now or when huggingface_hub was imported) is on."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def get_token() -> str | None:
    """The token huggingface_hub would use (``HF_TOKEN``, or the one saved by log-in)."""
    from huggingface_hub import get_token as hf_get_token

    return hf_get_token()


def login(token: str) -> str:
    """Check a Hugging Face access token and save it where huggingface_hub keeps it.

    Args:
        token: A user access token (https://huggingface.co/settings/tokens).

    Returns:
        The user name the token belongs to.

    Raises:
        OfflineError: The Hub cannot be reached.
        HubError: The Hub rejected the token.
    """
    import huggingface_hub as hf

    token = token.strip()
    if not token:
        raise HubError("the token is empty")
    _ensure_online()
    try:
        with _translate(None):
            who = hf.HfApi(endpoint=endpoint()).whoami(token=token)
    except GatedModelError:
        raise HubError("the Hub rejected this token; copy it again from your Hugging Face settings") from None
    with _translate(None):
        try:
            hf.login(token=token, add_to_git_credential=False)
        except ValueError as e:  # an organisation token or one the Hub rejects
            raise HubError(f"the token cannot be used to log in: {e}") from e
    return str(who.get("name", ""))


def logout() -> None:
    """Forget the saved token (an ``HF_TOKEN`` environment variable stays in force)."""
    import huggingface_hub as hf

    try:
        hf.logout()
    except Exception as e:  # huggingface_hub complains when nobody is logged in
        log.debug("logout: %s", e)


def _ensure_online() -> None:
    """Fail at once, with the offline message, when the Hub is out of reach.

    huggingface_hub retries a refused connection for about 20 s before giving up;
    one TCP connection attempt tells a missing network in a moment. It is skipped
    behind a proxy, where only the proxy is reachable.
    """
    if is_offline_mode():
        raise OfflineError(
            "offline mode is on (HF_HUB_OFFLINE): the Hugging Face Hub is not contacted. "
            "Models already in the library still work."
        )
    url = urllib.parse.urlsplit(endpoint())
    if url.scheme in urllib.request.getproxies():
        return
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError as e:
        raise OfflineError(_offline_message(e)) from e


def _offline_message(e: BaseException) -> str:
    host = urllib.parse.urlsplit(endpoint()).netloc
    return (
        f"cannot reach the Hugging Face Hub ({host}): {e.__class__.__name__}: {e}. Check the network "
        "connection. Models already in the library still work."
    )


def _is_network_error(e: BaseException) -> bool:
    # By name, so that it holds for the HTTP client of any huggingface_hub version.
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError"}) or isinstance(
        e, socket.gaierror | TimeoutError | ConnectionRefusedError
    )


@contextmanager
def _translate(repo_id: str | None, *, what: str = "") -> Iterator[None]:
    """Turn huggingface_hub's and the HTTP client's errors into Lowbit's."""
    from huggingface_hub import errors as hfe

    try:
        yield
    except LowbitError:
        raise
    except hfe.OfflineModeIsEnabled as e:
        raise OfflineError(
            "offline mode is on (HF_HUB_OFFLINE): the Hugging Face Hub is not contacted. "
            "Models already in the library still work."
        ) from e
    except hfe.GatedRepoError as e:
        raise GatedModelError(_gated_message(repo_id)) from e
    except hfe.RevisionNotFoundError as e:
        raise RepoNotFoundError(f"{repo_id} has no revision by that name") from e
    except hfe.RemoteEntryNotFoundError as e:
        raise RepoNotFoundError(f"{repo_id} has no file {what}".rstrip()) from e
    except hfe.RepositoryNotFoundError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401 and not get_token():
            raise GatedModelError(
                f"{repo_id} was not found, or it is private or gated. If it exists, log in with a Hugging "
                "Face token that has access to it (lowbit login)."
            ) from e
        raise RepoNotFoundError(f"no model {repo_id!r} on the Hub (or your token has no access to it)") from e
    except hfe.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise GatedModelError(_gated_message(repo_id)) from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise HubError(f"the Hub answered with an error (HTTP {status}): {first}") from e
    except Exception as e:
        if _is_network_error(e):
            raise OfflineError(_offline_message(e)) from e
        raise


def _gated_message(repo_id: str | None) -> str:
    name = repo_id or "this model"
    page = f"{endpoint()}/{repo_id}" if repo_id else "its page on the Hub"
    if get_token():
        return (
            f"{name} is gated and your token has no access to it yet: accept its conditions on {page} "
            "with the account the token belongs to, then try again."
        )
    return (
        f"{name} is gated: accept its conditions on {page}, then log in with a Hugging Face access "
        "token (lowbit login, or Log in in the app) and try again."
    )


def _api(token: str | None = None) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=token, library_name="lowbit")


# -- search and details ----------------------------------------------------------------


def quant_type_from_name(name: str) -> str | None:
    """The quantization type in a GGUF file name, e.g. "model-Q4_K_M.gguf" -> "Q4_K_M"."""
    stem = name.rsplit("/", 1)[-1]
    matches = _QUANT_RE.findall(stem)
    return matches[-1].upper() if matches else None


def file_kind(name: str) -> str:
    """What a repository file is to Lowbit: gguf, safetensors, index, config, tokenizer, pickle, other."""
    base = name.rsplit("/", 1)[-1].lower()
    if base.endswith(".gguf"):
        return "gguf"
    if base.endswith(".safetensors"):
        return "safetensors"
    if base.endswith(".safetensors.index.json"):
        return "index"
    if base in _CONFIG_FILES:
        return "config"
    if base in _TOKENIZER_FILES or base in ("tokenizer.model", "vocab.json", "merges.txt"):
        return "tokenizer"
    if base.endswith(PICKLE_SUFFIXES):
        return "pickle"
    return "other"


def _hub_file(sibling: Any) -> HubFile:
    name = sibling.rfilename
    lfs = getattr(sibling, "lfs", None)
    kind = file_kind(name)
    size = getattr(sibling, "size", None)
    sha256 = None
    if lfs:
        sha256 = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
        size = size if size is not None else (lfs.get("size") if isinstance(lfs, dict) else lfs.size)
    return HubFile(
        name=name,
        size=size,
        sha256=sha256,
        blob_id=getattr(sibling, "blob_id", None),
        kind=kind,
        quant_type=quant_type_from_name(name) if kind == "gguf" else None,
    )


def _architecture(info: Any) -> str | None:
    gg = getattr(info, "gguf", None) or {}
    if isinstance(gg, dict) and gg.get("architecture"):
        return str(gg["architecture"])
    cfg = getattr(info, "config", None) or {}
    if isinstance(cfg, dict):
        for a in cfg.get("architectures") or ():
            if a in HF_ARCHITECTURES:
                return HF_ARCHITECTURES[a]
        if cfg.get("model_type"):
            return str(cfg["model_type"])
    tags = getattr(info, "tags", None) or ()
    for t in tags:
        if t in SUPPORTED_ARCHITECTURES:
            return t
    return None


def _license(info: Any) -> str | None:
    for t in getattr(info, "tags", None) or ():
        if t.startswith("license:"):
            return t.split(":", 1)[1]
    card = getattr(info, "card_data", None)
    lic = getattr(card, "license", None) if card is not None else None
    return str(lic) if lic else None


def _n_params(info: Any) -> int | None:
    st = getattr(info, "safetensors", None)
    if st is not None:
        total = st.get("total") if isinstance(st, dict) else getattr(st, "total", None)
        if total:
            return int(total)
    gg = getattr(info, "gguf", None) or {}
    if isinstance(gg, dict) and gg.get("total"):
        return int(gg["total"])
    return None


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _hub_model(info: Any, *, with_files: bool) -> HubModel:
    arch = _architecture(info)
    siblings = getattr(info, "siblings", None)
    files = tuple(_hub_file(s) for s in siblings) if (with_files and siblings is not None) else None
    tags = tuple(getattr(info, "tags", None) or ())
    is_gguf = "gguf" in tags or bool(getattr(info, "gguf", None))
    if siblings:
        is_gguf = is_gguf or any(s.rfilename.lower().endswith(".gguf") for s in siblings)
    gated = getattr(info, "gated", None)
    return HubModel(
        repo_id=info.id,
        sha=getattr(info, "sha", None),
        architecture=arch,
        supported=arch in SUPPORTED_ARCHITECTURES,
        n_params=_n_params(info),
        license=_license(info),
        gated=bool(gated) and gated != "false",
        private=bool(getattr(info, "private", False)),
        downloads=getattr(info, "downloads", None),
        likes=getattr(info, "likes", None),
        created_at=_iso(getattr(info, "created_at", None)),
        last_modified=_iso(getattr(info, "last_modified", None)),
        pipeline_tag=getattr(info, "pipeline_tag", None),
        is_gguf=is_gguf,
        tags=tags,
        files=files,
    )


def search(
    query: str = "",
    *,
    sort: str = "downloads",
    limit: int = 20,
    gguf_only: bool = False,
    supported_only: bool = True,
    with_files: bool = False,
    token: str | None = None,
) -> list[HubModel]:
    """Search the Hub for text-generation models.

    Args:
        query: Words in the repository name ("" lists the most popular).
        sort: "downloads", "likes", "created" or "modified"; always highest or newest first.
        limit: Most results to return.
        gguf_only: Only repositories that hold GGUF files.
        supported_only: Only architectures Lowbit runs (llama, qwen2). The Hub cannot
            filter on "any of" several architectures, so results are filtered here
            from a few times more candidates.
        with_files: Also fetch each result's files with sizes and GGUF types (one
            more request per result).
        token: A Hugging Face token; default: the saved one.

    Returns:
        The matching models, in the Hub's order.

    Raises:
        OfflineError: The Hub cannot be reached.
        HubError: The Hub refused the request.
        ValueError: An unknown sort key or a limit below 1.
    """
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort {sort!r}; use one of {', '.join(SORT_KEYS)}")
    if limit < 1:
        raise ValueError("the limit must be at least 1")
    _ensure_online()
    api = _api(token)
    scan = limit * 5 if supported_only else limit
    out: list[HubModel] = []
    with _translate(None):
        items = api.list_models(
            search=query or None,
            pipeline_tag="text-generation",
            filter="gguf" if gguf_only else None,
            sort=SORT_KEYS[sort],
            limit=scan,
            expand=_SEARCH_EXPAND,
        )
        for info in items:
            m = _hub_model(info, with_files=True)
            if supported_only and not m.supported:
                continue
            if gguf_only and not m.is_gguf:
                continue
            out.append(m)
            if len(out) >= limit:
                break
    if with_files:
        out = [model_details(m.repo_id, token=token) for m in out]
    return out


def model_details(repo_id: str, *, revision: str | None = None, token: str | None = None) -> HubModel:
    """One repository with its files, their sizes and checksums, and GGUF types.

    Raises:
        OfflineError: The Hub cannot be reached.
        RepoNotFoundError: No such repository or revision.
        GatedModelError: A private repository that needs a token with access.
        HubError: Another refusal.
    """
    _ensure_online()
    with _translate(repo_id):
        info = _api(token).model_info(repo_id, revision=revision, files_metadata=True)
    return _hub_model(info, with_files=True)


# -- choosing files ------------------------------------------------------------------


def _pickle_message(repo_id: str, names: Sequence[str]) -> str:
    return (
        f"{repo_id} has only pickle checkpoints ({', '.join(names[:3])}). Lowbit does not open pickle "
        "files because loading one can run arbitrary code. Look for a version of the model with "
        "*.safetensors or GGUF files, or convert the checkpoint to safetensors yourself in a trusted "
        "environment (e.g. transformers' save_pretrained(..., safe_serialization=True))."
    )


CONFIG_LIMIT = 2 * 2**20  # a config.json larger than this is not a config


def read_config(model: HubModel) -> dict[str, Any] | None:
    """The repository's config.json, or None when it has none or it cannot be read.

    Only the shape of the model is taken from it, for the memory estimate; without it
    the estimate falls back to the parameter count, so any failure is quiet.
    """
    if not any(f.name == "config.json" for f in model.files or ()):
        return None
    rev = urllib.parse.quote(model.sha or "main", safe="")
    url = f"{endpoint()}/{model.repo_id}/resolve/{rev}/config.json"
    request = urllib.request.Request(url, headers={"User-Agent": "lowbit"})
    try:
        token = get_token()
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            data = json.loads(response.read(CONFIG_LIMIT))
    except (OSError, ValueError) as e:
        log.info("no config for %s: %s", model.repo_id, e)
        return None
    return data if isinstance(data, dict) else None


def select_files(model: HubModel, files: Sequence[str] | None = None) -> list[HubFile]:
    """The files a download needs.

    Without ``files``: the safetensors weights with config and tokenizer, or the one
    GGUF model of a GGUF repository (all its shards). With ``files``: the files whose
    names match (exact names or glob patterns such as ``*Q4_K_M.gguf``).

    Raises:
        UnsafeCheckpointError: The weights are pickle checkpoints only, or one was asked for.
        HubError: Nothing matches, or a GGUF repository holds several models to choose from.
    """
    repo_files = list(model.files or ())
    if files:
        chosen = [f for f in repo_files if any(f.name == p or fnmatch.fnmatch(f.name, p) for p in files)]
        if not chosen:
            names = ", ".join(f.name for f in repo_files[:12])
            raise HubError(f"no file of {model.repo_id} matches {' '.join(files)}; it has: {names}")
        pickles = [f.name for f in chosen if f.kind == "pickle"]
        if pickles:
            raise UnsafeCheckpointError(_pickle_message(model.repo_id, pickles))
        return _with_shards(chosen, repo_files)
    top = [f for f in repo_files if "/" not in f.name]  # subfolders hold other formats (onnx, ...)
    weights = [f for f in top if f.kind == "safetensors"]
    if weights:
        has_json = any(f.name == "tokenizer.json" for f in top)
        wanted = {"safetensors", "index", "config"}
        return [
            f
            for f in top
            if f.kind in wanted
            or (f.kind == "tokenizer" and f.name in _TOKENIZER_FILES)
            or (f.name == "tokenizer.model" and not has_json)
        ]
    ggufs = [f for f in repo_files if f.kind == "gguf"]
    if ggufs:
        groups = {_SHARD_RE.sub(r"\1", f.name) for f in ggufs}
        if len(groups) == 1:
            return sorted(ggufs, key=lambda f: f.name)
        listing = "; ".join(
            f"{f.name} ({f.quant_type or '?'}, {_mib(f.size)})"
            for f in sorted(ggufs, key=lambda f: f.size or 0)
            if not _SHARD_RE.match(f.name) or f.name.endswith("-00001-of-" + f.name[-10:-5] + ".gguf")
        )
        raise HubError(
            f"{model.repo_id} holds {len(groups)} GGUF models; choose one (e.g. lowbit download "
            f"{model.repo_id} --files NAME): {listing}"
        )
    pickles = [f.name for f in repo_files if f.kind == "pickle"]
    if pickles:
        raise UnsafeCheckpointError(_pickle_message(model.repo_id, pickles))
    raise HubError(f"{model.repo_id} has no safetensors or GGUF weights that Lowbit can use")


def _with_shards(chosen: list[HubFile], repo_files: list[HubFile]) -> list[HubFile]:
    """A chosen GGUF shard brings the other shards of its model."""
    names = {f.name for f in chosen}
    out = list(chosen)
    for f in chosen:
        m = _SHARD_RE.match(f.name)
        if m:
            for g in repo_files:
                gm = _SHARD_RE.match(g.name)
                if gm and gm.group(1) == m.group(1) and g.name not in names:
                    names.add(g.name)
                    out.append(g)
    return out


def _mib(n: int | None) -> str:
    return "? MiB" if n is None else f"{n / 2**20:.1f} MiB"


# -- download ---------------------------------------------------------------------------


@dataclass
class _Planned:
    file: HubFile
    url: str
    etag: str
    size: int
    partial: Path
    target: Path
    resumed: int = 0


class _Transfer:
    """Byte counts of a download, shared by the per-file progress bars."""

    def __init__(
        self,
        repo_id: str,
        plan: list[_Planned],
        progress: ProgressFn | None,
        on_update: Callable[[DownloadProgress], None] | None,
        cancel: Any,
    ) -> None:
        self.repo_id = repo_id
        self.total = sum(p.size for p in plan)
        self.files_total = len(plan)
        self.files_done = 0
        self.done_by_file = {p.file.name: p.resumed for p in plan}
        self.size_by_file = {p.file.name: p.size for p in plan}
        self.progress = progress
        self.on_update = on_update
        self.cancel = cancel
        self.samples: deque[tuple[float, int]] = deque()
        self.last_report = 0.0
        self.current = plan[0].file.name if plan else ""

    @property
    def done(self) -> int:
        return sum(self.done_by_file.values())

    def set_file(self, name: str, done: int) -> None:
        self.current = name
        self.done_by_file[name] = done
        self.report(force=True)

    def advance(self, name: str, n: float) -> None:
        if self.cancel is not None and self.cancel.cancelled:
            raise CancelledError("the download was cancelled; what arrived is kept to resume later")
        self.done_by_file[name] = self.done_by_file.get(name, 0) + int(n)
        self.report()

    def file_finished(self, name: str) -> None:
        self.files_done += 1
        self.done_by_file[name] = self.size_by_file[name]
        self.report(force=True)

    def speed(self, now: float) -> float:
        done = self.done
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > 5.0:
            self.samples.popleft()
        t0, d0 = self.samples[0]
        return (done - d0) / (now - t0) if now > t0 else 0.0

    def report(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report < 0.1:
            return
        self.last_report = now
        done, speed = self.done, self.speed(now)
        eta = (self.total - done) / speed if speed > 0 else None
        name = self.current
        if self.on_update is not None:
            self.on_update(
                DownloadProgress(
                    repo_id=self.repo_id,
                    file=name,
                    file_done=self.done_by_file.get(name, 0),
                    file_total=self.size_by_file.get(name),
                    done=done,
                    total=self.total,
                    speed_bps=speed,
                    eta_s=eta,
                    files_done=self.files_done,
                    files_total=self.files_total,
                )
            )
        if self.progress is not None:
            msg = f"{name}: {done / 2**20:.1f}/{self.total / 2**20:.1f} MiB, {speed / 2**20:.1f} MiB/s"
            self.progress("download", done, self.total, msg)


class _FileBar:
    """Stands in for tqdm in ``http_get``: forwards byte counts to the transfer."""

    def __init__(self, transfer: _Transfer, name: str, *, initial: int = 0, **_: Any) -> None:
        self.transfer = transfer
        self.name = name
        transfer.set_file(name, int(initial))

    def update(self, n: float | None = 1) -> None:
        self.transfer.advance(self.name, n or 0)

    def close(self) -> None:
        pass

    def __enter__(self) -> _FileBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _normalize_etag(etag: str | None) -> str:
    if not etag:
        return ""
    e = etag.strip()
    if e.startswith("W/"):
        e = e[2:]
    return e.strip('"')


def _expected_digest(f: HubFile, etag: str) -> tuple[str, str] | None:
    """(algorithm, hex digest) to check the content against: LFS SHA-256 or git blob SHA-1."""
    if f.sha256:
        return "sha256", f.sha256.lower()
    if re.fullmatch(r"[0-9a-fA-F]{64}", etag):
        return "sha256", etag.lower()
    if f.blob_id:
        return "git-sha1", f.blob_id.lower()
    if re.fullmatch(r"[0-9a-fA-F]{40}", etag):
        return "git-sha1", etag.lower()
    return None


def file_digest(path: Path, algorithm: str, cancel: Any = None) -> str:
    """SHA-256 of a file, or its git blob SHA-1 ("git-sha1"), in hex."""
    size = path.stat().st_size
    if algorithm == "sha256":
        h = hashlib.sha256()
    else:
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\0" % size)
    with path.open("rb") as fh:
        while chunk := fh.read(4 << 20):
            if cancel is not None and cancel.cancelled:
                raise CancelledError("the download was cancelled")
            h.update(chunk)
    return h.hexdigest()


def _safe_part(name: str) -> str:
    return name.replace("/", "__")


def _disk_free(path: Path) -> int:
    p = path
    while not p.exists() and p.parent != p:
        p = p.parent
    return shutil.disk_usage(p).free


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def download(
    repo_id: str,
    dest: str | Path,
    *,
    files: Sequence[str] | None = None,
    revision: str | None = None,
    token: str | None = None,
    progress: ProgressFn | None = None,
    on_update: Callable[[DownloadProgress], None] | None = None,
    cancel: Any = None,
) -> DownloadResult:
    """Download a model's files into a folder, resuming what an earlier attempt left.

    Files already complete (same ETag) are skipped; a partial file from an interrupted
    download or a previous run is continued with a Range request. Every file is
    checked against the Hub's checksum before it gets its final name.

    Args:
        repo_id: "owner/name".
        dest: The folder to put the files in (created if needed).
        files: Names or glob patterns; default: what :func:`select_files` picks.
        revision: Branch, tag or commit; default: the main branch. Files are fetched at
            the commit it resolves to, so they belong together.
        token: A Hugging Face token; default: the saved one.
        progress: Called as ``progress("download", done_bytes, total_bytes, message)``.
        on_update: Called with a :class:`DownloadProgress` (per file and total, speed, ETA).
        cancel: A CancelToken; cancelling keeps the partial file for a later resume.

    Returns:
        The folder, the files and the byte counts.

    Raises:
        OfflineError: The Hub cannot be reached.
        GatedModelError: The model needs a log-in or accepted conditions.
        RepoNotFoundError: No such repository, revision or file.
        UnsafeCheckpointError: Only pickle weights.
        DiskFullError: Not enough free space for the files (nothing was written).
        DownloadError: The transfer failed, or the content does not match its checksum.
        CancelledError: ``cancel`` was set.
    """
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    t0 = time.monotonic()
    dest = Path(dest)
    details = model_details(repo_id, revision=revision, token=token)
    chosen = select_files(details, files)
    commit = details.sha or revision or "main"
    tok = token or get_token()
    if details.gated and not tok:
        raise GatedModelError(_gated_message(repo_id))
    ep = endpoint()

    manifest = _read_manifest(dest)
    known = manifest.get("files", {}) if manifest.get("repo_id") == repo_id else {}
    plan: list[_Planned] = []
    complete: list[Path] = []
    for f in chosen:
        if cancel is not None:
            cancel.raise_if_cancelled()
        url = _resolve_url(ep, repo_id, commit, f.name)
        with _translate(repo_id, what=f.name):
            meta = get_hf_file_metadata(url, token=tok, endpoint=ep)
        etag = _normalize_etag(meta.etag)
        size = meta.size if meta.size is not None else f.size
        if size is None:
            raise DownloadError(f"the Hub did not give the size of {f.name}")
        target = safe_target(dest, f.name)
        entry = known.get(f.name) or {}
        if target.is_file() and target.stat().st_size == size and entry.get("etag") == etag:
            complete.append(target)
            continue
        partial = dest / PARTIAL_DIR / f"{_safe_part(f.name)}.{(etag or 'noetag')[:24]}.incomplete"
        resumed = partial.stat().st_size if partial.is_file() else 0
        if resumed > size:  # not ours to continue
            partial.unlink()
            resumed = 0
        plan.append(_Planned(f, meta.location or url, etag, size, partial, target, resumed))

    need = sum(p.size - p.resumed for p in plan)
    free = _disk_free(dest)
    if need and need + DISK_RESERVE_BYTES > free:
        raise DiskFullError(
            f"not enough free disk space to download {repo_id}: it needs {need / 2**30:.2f} GiB "
            f"(and {DISK_RESERVE_BYTES // 2**20} MiB to spare) but {dest} has {free / 2**30:.2f} GiB free"
        )

    transfer = _Transfer(repo_id, plan, progress, on_update, cancel)
    downloaded = 0
    for p in plan:
        p.partial.parent.mkdir(parents=True, exist_ok=True)
        headers = build_hf_headers(token=tok, library_name="lowbit")
        if urllib.parse.urlsplit(p.url).netloc != urllib.parse.urlsplit(ep).netloc:
            headers.pop("authorization", None)  # a signed CDN address: the token stays with the Hub
        with _translate(repo_id, what=p.file.name), p.partial.open("ab") as fh:
            fh.seek(0, os.SEEK_END)
            try:
                http_get(
                    p.url,
                    fh,
                    resume_size=p.resumed,
                    headers=headers,
                    expected_size=p.size,
                    displayed_filename=p.file.name,
                    tqdm_class=functools.partial(_FileBar, transfer, p.file.name),  # type: ignore[arg-type]
                )
            except OSError as e:
                if type(e) is not OSError:  # the Hub's and the network's own errors are translated above
                    raise
                raise DownloadError(f"downloading {p.file.name} of {repo_id} failed: {e}") from e
            fh.flush()
            os.fsync(fh.fileno())
        downloaded += p.size - p.resumed
        _verify(p, repo_id, cancel)
        p.target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p.partial, p.target)
        transfer.file_finished(p.file.name)
        known[p.file.name] = {"etag": p.etag, "size": p.size}
        _write_json_atomic(dest / MANIFEST, {"repo_id": repo_id, "revision": commit, "files": known})
        complete.append(p.target)
    try:
        (dest / PARTIAL_DIR).rmdir()
    except OSError:
        pass
    if not plan:
        _write_json_atomic(dest / MANIFEST, {"repo_id": repo_id, "revision": commit, "files": known})
    order = {f.name: i for i, f in enumerate(chosen)}
    paths = sorted(complete, key=lambda q: order.get(q.relative_to(dest).as_posix(), 0))
    return DownloadResult(
        repo_id=repo_id,
        revision=commit,
        folder=dest,
        files=tuple(paths),
        bytes_downloaded=downloaded,
        bytes_resumed=sum(p.resumed for p in plan),
        seconds=time.monotonic() - t0,
        details=details,
    )


def safe_target(dest: Path, name: str) -> Path:
    """Where a repository file goes inside ``dest``; a name that would land outside it
    (absolute, ``..``, a drive or backslashes) comes from a hostile listing and is refused.

    Raises:
        DownloadError: The name points outside ``dest``.
    """
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or ":" in name
        or any(x in ("", ".", "..") for x in parts)
    ):
        raise DownloadError(f"refusing to download {name!r}: its name points outside the model folder")
    return dest.joinpath(*parts)


def _resolve_url(ep: str, repo_id: str, revision: str, name: str) -> str:
    # hf_hub_url starts from the endpoint read when huggingface_hub was imported; this
    # follows HF_ENDPOINT as it is now.
    q = urllib.parse.quote
    return f"{ep}/{repo_id}/resolve/{q(revision, safe='')}/{q(name)}"


def _verify(p: _Planned, repo_id: str, cancel: Any) -> None:
    actual = p.partial.stat().st_size
    if actual != p.size:
        p.partial.unlink(missing_ok=True)
        raise DownloadError(f"{p.file.name} of {repo_id} arrived with {actual} bytes instead of {p.size}")
    expected = _expected_digest(p.file, p.etag)
    if expected is None:
        log.warning("%s of %s has no checksum to verify against", p.file.name, repo_id)
        return
    algorithm, digest = expected
    got = file_digest(p.partial, algorithm, cancel)
    if got != digest:
        p.partial.unlink(missing_ok=True)
        raise DownloadError(
            f"{p.file.name} of {repo_id} does not match the Hub's checksum ({algorithm} {got[:12]}... "
            f"instead of {digest[:12]}...): the file was damaged on the way and has been deleted. "
            "Try the download again."
        )


def discard_partial(dest: str | Path) -> int:
    """Delete what interrupted downloads left in a folder; returns the bytes freed."""
    folder = Path(dest) / PARTIAL_DIR
    freed = 0
    if folder.is_dir():
        for f in folder.iterdir():
            freed += f.stat().st_size
            f.unlink()
        folder.rmdir()
    return freed
