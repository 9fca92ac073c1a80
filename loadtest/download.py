"""100 MB download through the tunnel vs direct: throughput ratio and relay peak RSS.

python -m loadtest.download [--mb 100]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

from loadtest.common import rss_kib, stack


async def download(
    url: str, size: int, host: str | None, sample_pid: int | None
) -> tuple[float, int]:
    headers = {"Host": host} if host else {}
    peak = 0
    got = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        t0 = time.perf_counter()
        async with s.get(url, params={"size": str(size)}, headers=headers) as r:
            assert r.status == 200, r.status
            async for chunk in r.content.iter_any():
                got += len(chunk)
                if sample_pid is not None and got % (4 << 20) < len(chunk):
                    peak = max(peak, rss_kib(sample_pid))
        elapsed = time.perf_counter() - t0
    assert got == size, (got, size)
    return size / elapsed / 1e6, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()
    size = args.mb * 1024 * 1024
    with stack() as s:
        asyncio.run(download(s.relay_url + "/download", 1 << 20, s.host_header, None))  # warm-up
        base_rss = rss_kib(s.relay.pid)
        direct, _ = asyncio.run(download(s.direct_url + "/download", size, None, None))
        relayed, peak = asyncio.run(
            download(s.relay_url + "/download", size, s.host_header, s.relay.pid)
        )
    print(f"{args.mb} MB download")
    print(f"  direct : {direct:8.1f} MB/s")
    print(f"  relayed: {relayed:8.1f} MB/s   ratio {relayed / direct:.2f}")
    print(
        f"  relay RSS: {base_rss / 1024:.1f} MiB before, {peak / 1024:.1f} MiB peak during the download"
    )


if __name__ == "__main__":
    main()
