"""Log garbage-collector pauses of benchmarked processes (a diagnostic, loaded by `site`).

Benchmarks put this directory on PYTHONPATH and name an output directory in BENCH_GC_DIR.
In `relay serve` and `loadtest.many_agents` processes it appends one JSON line per
collection that took at least BENCH_GC_MIN_MS (default 10) to ``<dir>/<role>-<pid>.jsonl``:
``{"at": <epoch s at the end>, "gen": <generation>, "ms": <wall ms>}``. Elsewhere it does
nothing.

On SIGUSR2 such a process also writes a census of the objects the collector tracks, by
type, to ``<dir>/<role>-<pid>-census.json`` (what a full collection has to traverse;
``(frozen)`` counts the objects gc.freeze() put out of its sight).
With BENCH_TRACEMALLOC=1 it also traces allocations and writes, from the second census
on, the bytes allocated since the previous one by source line to ``...-tracemalloc.txt``.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal
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

    snapshots = []
    if os.environ.get("BENCH_TRACEMALLOC") == "1":
        import tracemalloc  # noqa: PLC0415 - only when asked: tracing slows everything

        tracemalloc.start(1)

    def census(_signum: int, _frame: object) -> None:
        if os.environ.get("BENCH_TRACEMALLOC") == "1":
            snapshots.append(tracemalloc.take_snapshot())
            if len(snapshots) > 1:
                diff = snapshots[-1].compare_to(snapshots[-2], "lineno")
                text = "\n".join(
                    f"{d.size_diff:>12} B {d.count_diff:>8} blocks  {d.traceback}"
                    for d in diff[:60]
                )
                with open(
                    os.path.join(out_dir, f"{role}-{os.getpid()}-tracemalloc.txt"), "w"
                ) as out:  # noqa: PTH118, PTH123
                    out.write(text + "\n")
        counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        counts["(frozen)"] = gc.get_freeze_count()  # tracked, but skipped by collections
        census_path = os.path.join(out_dir, f"{role}-{os.getpid()}-census.json")  # noqa: PTH118
        with open(census_path + ".tmp", "w") as out:  # noqa: PTH123
            json.dump(dict(counts), out)
        os.replace(census_path + ".tmp", census_path)

    signal.signal(signal.SIGUSR2, census)


if os.environ.get("BENCH_GC_DIR") and (role := _role()) is not None:
    _install(os.environ["BENCH_GC_DIR"], role)
