"""Log garbage-collector pauses of benchmarked processes (a diagnostic, loaded by `site`).

Benchmarks put this directory on PYTHONPATH and name an output directory in BENCH_GC_DIR.
In `relay serve` and `loadtest.many_agents` processes it appends one JSON line per
collection that took at least BENCH_GC_MIN_MS (default 10) to ``<dir>/<role>-<pid>.jsonl``:
``{"at": <epoch s at the end>, "gen": <generation>, "ms": <wall ms>}``. Elsewhere it does
nothing.
"""

from __future__ import annotations

import gc
import os
import sys
import time


def _role() -> str | None:
    if "serve" in sys.argv[1:2]:
        return "relay"
    if "loadtest.many_agents" in sys.orig_argv:
        return "agents"
    return None


def _install(out_dir: str, role: str) -> None:
    path = os.path.join(out_dir, f"{role}-{os.getpid()}.jsonl")  # noqa: PTH118
    threshold = float(os.environ.get("BENCH_GC_MIN_MS", "10")) / 1000
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        if took >= threshold:
            with open(path, "a") as log:  # noqa: PTH123
                log.write(
                    f'{{"at": {time.time()}, "gen": {info["generation"]}, "ms": {took * 1000:.1f}}}\n'
                )

    gc.callbacks.append(on_gc)


if os.environ.get("BENCH_GC_DIR") and (role := _role()) is not None:
    _install(os.environ["BENCH_GC_DIR"], role)
