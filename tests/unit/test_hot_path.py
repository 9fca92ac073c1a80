"""relay.hot_path: a build of these very sources runs compiled; anything else, interpreted."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay import hot_path

ROOT = Path(__file__).resolve().parents[2]
NO_TOOLCHAIN = ("no C compiler", "no Python headers")  # this machine's, not the code's


def where(module: str, **env: str) -> str:
    """The file ``module`` is loaded from in a fresh interpreter, and the hot path's state."""
    code = f"import {module} as m, relay.hot_path as h; print(m.__file__); print(h.STATE)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def test_make_install_built_the_hot_path_and_relay_loads_it():
    # make test runs make install first, which compiles (installing gcc as root if need be).
    manifest = hot_path.read_manifest()
    assert manifest is not None, "no build: make install makes one"
    if manifest.error.startswith(NO_TOOLCHAIN):
        pytest.skip(f"no build here: {manifest.error}")
    assert not manifest.error, manifest.error
    assert manifest.sources == hot_path.source_digest(), "stale build: run make install"
    for module in ("relay.proxy.front", "relay.agent.http_client", "relay.wire.flow"):
        file, state = where(module, RELAY_COMPILED="1").splitlines()
        assert state == "compiled"
        assert file.endswith(manifest.ext_suffix)
        assert Path(file).is_relative_to(hot_path.DIR / manifest.build)


def test_relay_compiled_0_runs_the_sources():
    out = where("relay.proxy.front", RELAY_COMPILED="0")
    assert out.splitlines() == [str(ROOT / "relay/proxy/front.py"), "interpreted: RELAY_COMPILED=0"]


def test_any_source_edited_since_the_build_keeps_the_whole_set_interpreted(monkeypatch):
    manifest = hot_path.read_manifest()
    if manifest is None or manifest.error:
        pytest.skip("no build here")
    monkeypatch.delenv("RELAY_COMPILED", raising=False)  # make test's second, interpreted pass
    assert hot_path._why_not()[0] == ""  # the build as it is would be used
    monkeypatch.setattr(hot_path, "source_digest", lambda: "0" * 64)
    why, files = hot_path._why_not()
    assert files == {}
    assert why.startswith("sources changed")


def test_unreadable_sources_keep_the_set_interpreted(monkeypatch):
    manifest = hot_path.read_manifest()
    if manifest is None or manifest.error:
        pytest.skip("no build here")
    monkeypatch.delenv("RELAY_COMPILED", raising=False)

    def unreadable() -> str:
        raise PermissionError("relay/wire/flow.py")

    monkeypatch.setattr(hot_path, "source_digest", unreadable)
    why, files = hot_path._why_not()
    assert files == {}
    assert why.startswith("sources unreadable")


def _awaits_while_handling(tree: ast.AST) -> list[int]:
    """Lines of awaits inside an except or finally block, and of ``async with`` (whose exit
    is awaited while an exception may be in flight)."""
    found: list[int] = []

    def visit(node: ast.AST, handling: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            handling = False  # a nested function runs on its own
        if isinstance(node, ast.AsyncWith) or (isinstance(node, ast.Await) and handling):
            found.append(node.lineno)
        if isinstance(node, ast.Try | ast.TryStar):
            for child in node.body + node.orelse:
                visit(child, handling)
            for handler in node.handlers:
                visit(handler, True)
            for child in node.finalbody:
                visit(child, True)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, handling)

    visit(tree, False)
    return found


@pytest.mark.parametrize("module", hot_path.MODULES)
def test_compiled_modules_never_await_while_handling_an_exception(module: str):
    # A mypyc coroutine cancelled while suspended in a finally block leaves its
    # CancelledError as the thread's current exception (sys.exc_info()) for all that runs
    # after, in every task: seen with TunnelConnection.read_loop compiled, reproduced with
    # a five-line module. Interpreted coroutines keep that state per frame.
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    assert _awaits_while_handling(ast.parse(source)) == [], f"{module}: await in except/finally"


def test_the_await_check_finds_what_it_looks_for():
    source = """
async def f(ev):
    try:
        await ev.wait()
    except ValueError:
        await ev.wait()
    finally:
        async def g():
            await ev.wait()
        await g()
    async with ev:
        await ev.wait()
"""
    assert _awaits_while_handling(ast.parse(source)) == [6, 10, 11]
