"""Run an installed Lowbit as a person's machine would, with nothing of the build around it.

    python packaging/smoke_test.py PROGRAM MODEL.gguf [--tokens 16]

PROGRAM is the packaged ``lowbit`` (``lowbit-cli.exe`` on Windows, ``.../MacOS/lowbit-cli``
in the macOS bundle, the AppImage or its AppRun on Linux). It runs with a scratch home
and only the system's PATH: no virtual environment, no PYTHONPATH. Checks that it
loads MODEL and generates exactly that many tokens, that torch is not in the package,
and that the GUI opens offscreen and closes cleanly. Prints the start-up time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """Only what a login session has, pointed at a scratch home."""
    env = {
        "HOME": str(home),
        "USERPROFILE": str(home),
        "APPDATA": str(home / "AppData" / "Roaming"),
        "LOCALAPPDATA": str(home / "AppData" / "Local"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "LANG": "C.UTF-8",
        "QT_QPA_PLATFORM": "offscreen",
    }
    for name in ("SYSTEMROOT", "WINDIR", "TEMP", "TMP", "TMPDIR", "COMSPEC"):
        if name in os.environ:
            env[name] = os.environ[name]
    if os.name == "nt":
        system = os.environ.get("SYSTEMROOT", r"C:\Windows")
        env["PATH"] = os.pathsep.join([os.path.join(system, "System32"), system])
    else:
        env["PATH"] = "/usr/bin:/bin"
    env.update(extra)
    return env


def run_json(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[dict, float]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise AssertionError(f"{cmd} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def check(program: Path, model: Path, home: Path, n_tokens: int = 16, **extra_env: str) -> dict:
    """Run both self-checks; returns the generated tokens and the start-up times.

    Raises:
        AssertionError: A check failed.
    """
    env = clean_env(home, **extra_env)
    home.mkdir(parents=True, exist_ok=True)
    gen, _ = run_json(
        [str(program), "self-check", str(model), "--tokens", str(n_tokens), "--json"], env, home
    )
    assert gen["packaged"] is True, "this is not the packaged app"
    assert gen["torch_available"] is False, "torch must stay out of the package"
    assert len(gen["generate"]["tokens"]) == n_tokens
    gui, wall = run_json([str(program), "self-check", "--gui", "--json"], env, home)
    return {
        "isa": gen["isa"],
        "tokens": gen["generate"]["tokens"],
        "text": gen["generate"]["text"],
        "decode_tps": gen["generate"]["decode_tps"],
        "window_shown_s": gui["gui"]["shown_s"],
        "start_show_close_s": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("program", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = check(args.program.resolve(), args.model.resolve(), Path(tmp) / "home", args.tokens)
        except AssertionError as e:
            print(f"smoke test failed: {e}", file=sys.stderr)
            return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
