"""`relay ...` as a plain install (no ``server`` extra) runs it: those libraries cannot load.

Usage: ``python -m tests.e2e.agent_only agent --server ... --token ... --to ...``
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

from relay.cli.main import main, server_only


class BlockServerLibraries(MetaPathFinder):
    def find_spec(self, name, path, target=None):
        """Refuse the server's libraries; None ("not mine") for anything else."""
        if server_only(name):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)


if __name__ == "__main__":
    loaded = sorted(m for m in sys.modules if server_only(m))
    if loaded:
        sys.exit(f"server libraries already loaded by relay.cli.main: {loaded}")
    sys.meta_path.insert(0, BlockServerLibraries())
    sys.exit(main(sys.argv[1:]))
