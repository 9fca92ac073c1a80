"""The modules every proxied request runs through, compiled with mypyc when a build is here.

``make install`` runs ``scripts/compile_hot_path.py``, which compiles :data:`MODULES` with
mypyc (the compiler that comes with mypy: the same typed Python, as C extension modules)
into a directory of its own under ``relay/_compiled/`` and then points the manifest there,
with a digest of every source of ``relay`` and ``directory`` (a compiled module carries
the types and the ``Final`` constants of the modules it imports, not only its own code).
:func:`install`, run first thing by ``relay/__init__``, loads those modules from that
build only when the digest still matches: after any edit the whole set runs interpreted
until the next ``make install``. Without a build (no C compiler, say), or with
``RELAY_COMPILED=0``, everything runs interpreted: py-spy sees into interpreted functions
only, so profile that way.

Compiled code checks at run time what the annotations say (a ``bytes`` parameter refuses a
``bytearray``) where interpreted code would go on; ``make test`` runs the unit tests both
ways. And a compiled coroutine cancelled while suspended in an ``except`` or ``finally``
block leaves its CancelledError as the thread's current exception for everything after,
in every task: a module here never awaits there, nor uses ``async with`` (a unit test
checks). Cleanup that must wait runs after the ``try`` instead. Modules defining msgspec
structs stay interpreted: mypyc drops a class's keywords (``tag=``, ``array_like=``).
What runs is in :data:`STATE` (``relay serve`` and ``relay agent`` log it).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

__all__ = ["DIR", "MODULES", "SHARED", "STATE", "Manifest", "install", "source_digest"]

#: Compiled together; each only by its own module name.
MODULES: Final = (
    "relay.wire.http1",
    "relay.wire.streams",
    "relay.wire.flow",
    "relay.wire.channel",
    "relay.wire.ws_batch",
    "relay.wire.ws_pump",
    "relay.wire.connection",
    "relay.agent.session",
    "relay.proxy.headers",
    "relay.proxy.routing",
    "relay.proxy.origin",
    "relay.proxy.exchange",
    "relay.proxy.front",
    "relay.agent.exchange",
    "relay.agent.http_client",
)
#: mypyc's shared library of the build, a top-level module of its own.
SHARED: Final = "relay_hot_path__mypyc"
#: Where builds go, inside the package (not in git).
DIR: Final = Path(__file__).resolve().parent / "_compiled"
_ROOT: Final = Path(__file__).resolve().parent.parent
_PACKAGES: Final = ("relay", "directory")


class Manifest(msgspec.Struct, frozen=True):
    """What the current build holds: written by the build, read at import."""

    ext_suffix: str  # the interpreter it was built for (sysconfig EXT_SUFFIX)
    sources: str  # source_digest() of what it was built from
    build: str = ""  # its directory in DIR
    files: dict[str, str] = {}  # module name (MODULES, SHARED) -> file in the build
    error: str = ""  # why there is no build (no compiler, mypyc failed, ...)


def source_digest(root: Path = _ROOT) -> str:
    """One sha256 over every source of ``relay`` and ``directory`` under ``root``."""
    digest = hashlib.sha256()
    for package in _PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            if relative.parts[:2] == ("relay", "_compiled"):
                continue
            digest.update(f"{relative}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def read_manifest(directory: Path = DIR) -> Manifest | None:
    """The manifest in ``directory``; None when there is none or it cannot be read."""
    try:
        return msgspec.json.decode((directory / "manifest.json").read_bytes(), type=Manifest)
    except (OSError, msgspec.DecodeError):
        return None


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the compiled modules of a build, ahead of their sources."""

    def __init__(self, files: dict[str, Path]) -> None:
        self._files = files

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,  # noqa: ARG002 - the finder protocol's
        target: ModuleType | None = None,  # noqa: ARG002
    ) -> importlib.machinery.ModuleSpec | None:
        file = self._files.get(fullname)
        if file is None:
            return None
        return importlib.util.spec_from_file_location(fullname, file)


def _why_not() -> tuple[str, dict[str, Path]]:
    """Why the build cannot be used ("" when it can), and its files."""
    if os.environ.get("RELAY_COMPILED", "1") == "0":
        return "RELAY_COMPILED=0", {}
    manifest = read_manifest()
    if manifest is None:
        return "no build (make install compiles it)", {}
    if manifest.error:
        return f"the build failed: {manifest.error}", {}
    if manifest.ext_suffix != sysconfig.get_config_var("EXT_SUFFIX"):
        return f"built for another interpreter ({manifest.ext_suffix})", {}
    try:
        sources = source_digest()
    except OSError as exc:  # a source we cannot read: run what Python itself can import
        return f"sources unreadable ({exc})", {}
    if manifest.sources != sources:
        return "sources changed since the build (make install rebuilds it)", {}
    build = DIR / manifest.build
    # Only the modules hashed above, whatever else a manifest lists.
    files = {name: build / manifest.files.get(name, "-") for name in (*MODULES, SHARED)}
    if not all(f.is_file() for f in files.values()):
        return "the build is incomplete (make install rebuilds it)", {}
    return "", files


STATE = "interpreted: not installed yet"


def install() -> str:
    """Load the compiled modules from now on if a build of these very sources is here.

    Returns (and keeps in :data:`STATE`) what runs: "compiled", or "interpreted: <why>".
    ``relay/__init__`` calls it once, before any of :data:`MODULES` can be imported.
    """
    global STATE  # noqa: PLW0603 - set once, at import
    why, files = _why_not()
    if why:
        STATE = f"interpreted: {why}"
    else:
        sys.meta_path.insert(0, _Finder(files))
        STATE = "compiled"
    return STATE
