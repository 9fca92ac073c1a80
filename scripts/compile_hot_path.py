"""Compile relay.hot_path.MODULES with mypyc into relay/_compiled/ (see relay/hot_path.py).

    python scripts/compile_hot_path.py [--into DIR] [--if-stale] [--require]

One build at a time (a lock in DIR). Each build gets a directory of its own; the manifest,
replaced last and atomically, points at it, and the build before it stays for a relay
that read the old manifest a moment ago. A machine without a C compiler (or Python's
headers) gets them from apt when this runs as root; when a build still cannot be made,
the manifest records why and the relay runs interpreted, the same code. The exit status
is 0 either way (so ``make install`` goes on), unless ``--require``.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["RELAY_COMPILED"] = "0"  # never load an old build while making a new one

from relay import hot_path  # noqa: E402 - after the path and the switch above

GROUP = hot_path.SHARED.removesuffix("__mypyc")
KEEP = 2  # builds kept: the current one and the one before it


def _apt(packages: list[str]) -> str:
    """Install ``packages`` with apt when we are root; "" on success, else why not."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root, or no apt-get"
    print(f"compile_hot_path: installing {' '.join(packages)} (apt)", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        if subprocess.run(argv, env=env, check=False).returncode:
            return f"{' '.join(argv)} failed"
    return ""


def ensure_toolchain() -> str:
    """Why there is no C compiler or no Python.h ("" when both are here, from apt if need be)."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not (shutil.which(cc) or shutil.which("cc")):
        why = _apt(["gcc", "libc6-dev"])
        if why or not (shutil.which(cc) or shutil.which("cc")):
            return f"no C compiler ({cc}): {why or 'apt installed none'}"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        # Debian's own Python keeps its headers in a package of their own.
        version = f"python{sys.version_info.major}.{sys.version_info.minor}-dev"
        why = _apt([version]) if sys.base_prefix == "/usr" else "not Debian's Python"
        if why or not headers.exists():
            return f"no Python headers ({headers}): {why or 'apt installed none'}"
    return ""


def compile_into(out: Path, work: Path) -> str:
    """Run mypyc over the modules, output under ``out``; "" on success, else why not."""
    paths = [str(ROOT / (name.replace(".", "/") + ".py")) for name in hot_path.MODULES]
    # setup() in a child: mypyc's build runs in the project's directory (its mypy
    # configuration) and its output, errors included, stays readable on its own.
    code = (
        "from setuptools import setup\n"
        "from mypyc.build import mypycify\n"
        f"setup(name={GROUP!r}, ext_modules=mypycify({paths!r}, opt_level='3',"
        f" group_name={GROUP!r}, target_dir={str(work / 'c')!r}),"
        f" script_args=['build_ext', '--build-lib', {str(out)!r},"
        f" '--build-temp', {str(work / 'tmp')!r}])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if "error" in ln]
        return "mypyc failed: " + (lines[-1] if lines else f"exit {done.returncode}")
    return ""


def module_files(out: Path, suffix: str) -> tuple[dict[str, str], str]:
    """Each module's file relative to ``out``, and what is missing ("" when nothing)."""
    files: dict[str, str] = {}
    for name in (*hot_path.MODULES, hot_path.SHARED):
        *package, module = name.split(".")
        file = Path(*package, module + suffix)
        if not (out / file).is_file():
            return {}, f"mypyc made no {file}"
        files[name] = str(file)
    return files, ""


def build(into: Path) -> str:
    """Make a build and point the manifest at it (or record why not); the error, if any."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    sources = hot_path.source_digest()
    name = f"build-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    files: dict[str, str] = {}
    error = ensure_toolchain()
    with tempfile.TemporaryDirectory(prefix="relay-hot-path-") as tmp:
        work = Path(tmp)
        if not error:
            error = compile_into(work / "out", work)
        if not error:
            files, error = module_files(work / "out", suffix)
        if not error and hot_path.source_digest() != sources:
            error = "a source changed during the build (run it again)"
        if not error:
            shutil.move(work / "out", into / name)
    manifest = hot_path.Manifest(
        suffix, sources, name if not error else "", files if not error else {}, error
    )
    staged = into / f".manifest-{os.getpid()}.json"
    staged.write_bytes(msgspec.json.encode(manifest))
    staged.replace(into / "manifest.json")  # readers see the old one or the new one
    builds = sorted(into.glob("build-*"), key=lambda p: p.stat().st_mtime)
    for old in builds[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    for other in into.iterdir():  # what an older layout left
        if not other.name.startswith(("build-", "manifest.json", ".lock")):
            if other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
            else:
                other.unlink(missing_ok=True)
    return error


def current(into: Path) -> bool:
    """Whether ``into`` holds a usable build of the sources as they are.

    A recorded failure of these very sources counts as current (it would fail again, 40 s
    later); it is shown, with how to try anyway.
    """
    manifest = hot_path.read_manifest(into)
    if (
        manifest is None
        or manifest.sources != hot_path.source_digest()
        or manifest.ext_suffix != sysconfig.get_config_var("EXT_SUFFIX")
    ):
        return False
    if manifest.error:
        print(
            f"compile_hot_path: the hot path runs interpreted: {manifest.error}"
            " (python scripts/compile_hot_path.py tries again)",
            file=sys.stderr,
        )
        return True
    build_dir = into / manifest.build
    return all((build_dir / file).is_file() for file in manifest.files.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--into", type=Path, default=hot_path.DIR)
    parser.add_argument(
        "--if-stale", action="store_true", help="only when the sources changed since the last try"
    )
    parser.add_argument("--require", action="store_true", help="exit 1 when no build is made")
    args = parser.parse_args()
    into: Path = args.into
    into.mkdir(parents=True, exist_ok=True)
    with (into / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the next one then sees it
        if args.if_stale and current(into):
            return
        error = build(into)
    if error:
        print(f"compile_hot_path: the hot path runs interpreted: {error}", file=sys.stderr)
        if args.require:
            sys.exit(1)
    else:
        print(f"compile_hot_path: {len(hot_path.MODULES)} modules compiled into {into}")


if __name__ == "__main__":
    main()
