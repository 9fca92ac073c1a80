"""The allocator tuning: applied on glibc, left alone when the operator set their own."""

from __future__ import annotations

import subprocess
import sys

CHECK = "from relay.allocator import tune_for_bulk_buffers as t; print(t())"


def run_check(env_extra: dict[str, str]) -> str:
    env = {"PATH": "/usr/bin:/bin", **env_extra}
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.strip()


def test_tuned_on_glibc():
    # This suite runs on Linux with glibc (Debian/Ubuntu, CI): mallopt accepts both values.
    assert run_check({}) == "True"


def test_operator_tunables_win():
    assert run_check({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}) == "False"
