"""A presence consumer that dies mid-batch: run as a real process, then SIGKILLed.

``python -m tests.e2e.doomed_consumer REDIS_URL PREFIX N single|cluster`` appends N ``Connected`` events
for hosts ``h_doomed_<i>``, joins the ``presence`` group as ``doomed``, applies the first
half of the batch it reads, prints ``HALF <ids>`` and hangs, holding every entry of the
batch unacknowledged until it is killed.
"""

from __future__ import annotations

import asyncio
import sys

from directory.consumer import StreamConsumer
from directory.events import Connected, RedisEventLog
from directory.keys import Keys
from directory.presence import PresenceStore
from directory.store import connect


async def main(url: str, prefix: str, n: int, *, cluster: bool) -> None:
    redis = await connect(url, cluster=cluster)
    keys = Keys(prefix)
    store = PresenceStore(redis, keys)
    await RedisEventLog(redis, keys).append_many(
        [
            Connected(
                host_id=f"h_doomed_{i}",
                machine_id="m-doomed",
                epoch=1,
                remote_addr="10.9.9.9",
                agent_version="doomed/1",
                at=1_000_000.0 + i,
            )
            for i in range(n)
        ]
    )

    async def apply_half_then_hang(entries):
        await store.apply(entries[: len(entries) // 2])
        print("HALF", len(entries), flush=True)
        await asyncio.Event().wait()

    consumer = StreamConsumer(
        redis, keys, "presence", "doomed", batch_handler=apply_half_then_hang, batch_size=n
    )
    await consumer.step()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), cluster=sys.argv[4] == "cluster"))
