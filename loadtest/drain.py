"""Drain under load: SIGTERM the machine holding most tunnels while requests keep coming.

Three `relay serve` machines share one real Valkey behind `relay edge`; one agent process
holds N tunnels (dialling through the edge, so they spread round robin) in front of a tiny
upstream. Client loops send GET / through the edge to the hosts in turn, without pause.
The machine holding most tunnels gets SIGTERM; the loops go on until a few seconds after
it exits. Reports failed requests (goal 0), requests served during the drain, the drain's
duration (SIGTERM -> exit) and exit status, and where the agents ended up.

    python -m loadtest.drain [--hosts 20] [--clients 16] [--warmup 2] [--after 3] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import secrets
import signal
import time
from dataclasses import dataclass

import aiohttp
import redis.asyncio as redis_async

from loadtest.common import (
    agents_argv,
    count_by,
    create_hosts,
    edge_argv,
    fleet,
    free_port,
    log_events,
    owner_machines,
    quiet_logs,
    raise_nofile,
    relay_argv,
    run,
    upstream_argv,
    wait_exit,
    wait_owned,
    wait_ready,
    write_tokens,
)

MACHINES = ("m0", "m1", "m2")


@dataclass(frozen=True, slots=True)
class Result:
    started: float
    ended: float
    outcome: int | str  # HTTP status, or the client error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--clients", type=int, default=16, help="concurrent request loops")
    parser.add_argument("--warmup", type=float, default=2, help="load before SIGTERM (s)")
    parser.add_argument("--after", type=float, default=3, help="load after the exit (s)")
    parser.add_argument("--drain-timeout", default=None, help="relay --drain-timeout (s)")
    parser.add_argument("--log-level", default="info", help="of relays and agents")
    parser.add_argument("--keep", action="store_true", help="keep the logs' temp dir")
    return parser.parse_args(argv)


async def load_loop(
    session: aiohttp.ClientSession,
    url: str,
    slugs: list[str],
    offset: int,
    stop: asyncio.Event,
    results: list[Result],
) -> None:
    """GET ``url`` for each host in turn, back to back, until ``stop``."""
    i = offset
    while not stop.is_set():
        slug = slugs[i % len(slugs)]
        i += 1
        started = time.monotonic()
        try:
            async with session.get(url, headers={"Host": f"{slug}.localhost"}) as r:
                body = await r.read()
                outcome: int | str = r.status
                if r.status != 200:
                    outcome = f"{r.status} {body[:100].decode(errors='replace')}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = f"{type(exc).__name__}: {str(exc)[:100]}"
        results.append(Result(started, time.monotonic(), outcome))


def relay_args(args: argparse.Namespace) -> list[str]:
    return ["--drain-timeout", str(args.drain_timeout)] if args.drain_timeout else []


async def scenario(args: argparse.Namespace) -> dict:
    raise_nofile(4 * args.hosts + 4096)
    ports = {m: free_port() for m in MACHINES}
    edge_port, up_port = free_port(), free_port()
    edge_url, up_url = f"http://127.0.0.1:{edge_port}", f"http://127.0.0.1:{up_port}"
    prefix = "bench" + secrets.token_hex(3)
    async with fleet(args.log_level, keep=args.keep) as (procs, redis_url):
        client = redis_async.Redis.from_url(redis_url)
        procs.spawn("upstream", upstream_argv(up_port))
        relays = {
            m: procs.spawn(
                f"relay-{m}",
                relay_argv(m, ports[m], redis_url, prefix, procs.tmp, *relay_args(args)),
            )
            for m in MACHINES
        }
        procs.spawn("edge", edge_argv(edge_port, ports))
        await wait_ready(up_url + "/")
        for port in ports.values():
            await wait_ready(f"http://127.0.0.1:{port}/healthz")
        await wait_ready(edge_url + "/healthz")
        hosts = await create_hosts(redis_url, prefix, args.hosts)
        ids = [h.id for h in hosts]
        tokens = write_tokens(procs.tmp / "tokens.txt", hosts)
        procs.spawn("agents", agents_argv(edge_url, up_url, tokens, "--log-level", args.log_level))
        await wait_owned(client, prefix, ids, timeout=60)
        before = count_by(await owner_machines(client, prefix, ids))
        holder = max(before, key=lambda m: before[m])
        results: list[Result] = []
        stop = asyncio.Event()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            slugs = [h.slug for h in hosts]
            loops = [
                asyncio.create_task(load_loop(session, edge_url + "/", slugs, i, stop, results))
                for i in range(args.clients)
            ]
            await asyncio.sleep(args.warmup)
            t_term, term_wall = time.monotonic(), time.time()
            relays[holder].send_signal(signal.SIGTERM)
            status = await wait_exit(relays[holder], timeout=120)
            t_exit = time.monotonic()
            await asyncio.sleep(args.after)
            stop.set()
            await asyncio.gather(*loops)
        after = count_by(await owner_machines(client, prefix, ids))
        await client.aclose()
        moved = agent_moves(procs.log("agents"), term_wall)
        phases = drain_phases(procs.log(f"relay-{holder}"), term_wall)
    report(args, results, holder, status, (t_term, t_exit), before, after, moved)
    print(f"  holder's log   : {phases}")
    return figures(args, results, holder, status, (t_term, t_exit), before, after)


def figures(args, results, holder, status, window, before, after) -> dict:
    t_term, t_exit = window
    failed = [r for r in results if r.outcome != 200]
    outcomes = collections.Counter(str(r.outcome) for r in failed)
    return {
        "hosts": args.hosts,
        "clients": args.clients,
        "requests": len(results),
        "failed": len(failed),
        "failures": dict(outcomes.most_common(5)),
        "served_during_drain": sum(
            1 for r in results if t_term <= r.ended <= t_exit and r.outcome == 200
        ),
        "drain_s": t_exit - t_term,
        "exit_status": status,
        "holder": holder,
        "tunnels_before": before,
        "tunnels_after": after,
    }


def measure(**overrides) -> dict:
    """Run the scenario (printing its report) with the defaults but ``overrides``."""
    args = parse_args([])
    for name, value in overrides.items():
        if not hasattr(args, name):
            raise TypeError(f"drain has no option {name!r}")
        setattr(args, name, value)
    quiet_logs()
    return run(scenario(args))


def drain_phases(text: str, since: float) -> str:
    """When the draining relay logged each step of its drain, after the SIGTERM."""
    steps = []
    for event in ("relay.draining", "relay.drained", "relay.stopped"):
        times = [t for t in log_events(text, event) if t >= since - 0.5]
        if times:
            steps.append(f"{event} +{times[0] - since:.2f} s")
    return ", ".join(steps) or "no info lines (--log-level)"


def agent_moves(text: str, since: float) -> str:
    """How many agents got the drain frame, and how many retired their old tunnel."""
    drained = [t for t in log_events(text, "agent.drain_requested") if t >= since]
    retired = [t for t in log_events(text, "agent.retired_old_tunnel") if t >= since]
    if not drained:
        return "no info lines (--log-level)"
    return (
        f"{len(drained)} got the drain frame within {max(drained) - since:.2f} s,"
        f" {len(retired)} retired their old tunnel by {max(retired, default=since) - since:.2f} s"
    )


def report(args, results, holder, status, window, before, after, moved) -> None:
    t_term, t_exit = window
    failed = [r for r in results if r.outcome != 200]
    during = [r for r in results if t_term <= r.ended <= t_exit and r.outcome == 200]
    first = min(r.started for r in results)
    last = max(r.ended for r in results)
    print(
        f"drain: {args.hosts} hosts on {len(MACHINES)} machines behind relay edge,"
        f" {args.clients} client loops of GET / through the edge"
    )
    print(f"  tunnels before : {before}; SIGTERM -> {holder} ({before[holder]} tunnels)")
    print(f"  requests       : {len(results)} in {last - first:.1f} s")
    print(f"  failed         : {len(failed)}   (goal 0)")
    by_outcome = collections.defaultdict(list)
    for r in failed:
        by_outcome[r.outcome].append(r.ended - t_term)
    for outcome, offsets in sorted(by_outcome.items(), key=lambda kv: -len(kv[1]))[:5]:
        when = ", ".join(f"{o:+.2f}" for o in sorted(offsets)[:5])
        print(f"      {len(offsets)} x {outcome}  (ended at SIGTERM {when} s)")
    exit_text = "did not exit" if status is None else f"exit status {status}"
    print(f"  drain          : {t_exit - t_term:.2f} s from SIGTERM to exit, {exit_text}")
    print(f"  served 200 during the drain: {len(during)}")
    print(f"  tunnels after  : {after}")
    print(f"  agents         : {moved}")


def main() -> None:
    quiet_logs()
    run(scenario(parse_args()))


if __name__ == "__main__":
    main()
