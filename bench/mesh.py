"""Mesh benchmark: FlowMesh's peer mesh beside HashiCorp Serf, one OS process per member.

    python bench/mesh.py [--only converge|idle|detect|soak|spread|profile]
                         [--members 20] [--trials 10] [--idle-seconds 60]
                         [--soak-seconds 600] [--loss 0.10]
                         [--spread-members 100] [--spread-per-process 10]
                         [--spread-trials 10] [--encrypt on|off|both]
                         [--no-serf] [--eager-import] [--json FILE]

Every member is a real process on 127.0.0.1 (bench/mesh_member.py for
FlowMesh, ``serf agent`` for Serf), both at their default settings
(``MeshConfig()``; Serf's LAN profile).

``--encrypt`` says how both systems protect their datagrams: ``on``, FlowMesh
seals them (ChaCha20-Poly1305, ``MeshConfig()``'s default) and Serf gets
``-encrypt`` (memberlist's AES-GCM gossip encryption); ``off``, FlowMesh only
authenticates them (HMAC, ``MeshConfig(encrypt=False)``) and Serf runs
unencrypted; ``both``, the idle scenario measures all four, one cluster after
the other, and every other scenario runs ``on``. Without ``--encrypt``, idle
is ``both`` and the rest ``on``. Scenarios:

* converge: the first member is started; then the other ``--members`` - 1 are
  started at once, joining through it. The time until every member sees
  every other alive, counted from the first of them being started
  (including process start-up) and from the last one reporting itself up.
  ``--converge-runs`` fresh clusters of each system, alternated.
* idle: after convergence and ``--settle`` quiet seconds, each member
  process over ``--idle-seconds``: CPU (utime + stime from /proc/PID/stat)
  as % of one core, resident memory (VmRSS), wakeups/s (voluntary context
  switches), and UDP datagrams sent and received per second, counted by the
  kernel (nftables counters per port, the same for both systems) and, for
  FlowMesh, by stats()["sent"] / ["received"] as well, and the bytes those
  datagrams carry (UDP payload). Each figure is printed with its ratio to
  its baseline of the same run: FlowMesh sealed against FlowMesh
  authenticated and against Serf encrypted, FlowMesh authenticated against
  Serf unencrypted, Serf encrypted against Serf unencrypted. With both
  FlowMesh modes, also bench/keyring.py's cost of sealing one datagram, and
  the CPU that predicts for an idle member. Also a lone member process's
  memory with the package's names loaded lazily and eagerly.
* detect: ``--trials`` times, a member is SIGKILLed (never the first); the
  time until each other member marks it dead, then it is restarted as a new
  process (FlowMesh: a new incarnation from its start time; Serf: same name
  and port) and must be seen alive again by all.
* soak: FlowMesh only. ``--members`` for ``--soak-seconds`` with ``--loss``
  of every datagram dropped at the sender (LossyTransport in each member).
  Deaths, suspicions, refutations.
* spread: FlowMesh only. ``--spread-members`` in processes of
  ``--spread-per-process`` members each: their convergence, then
  ``--spread-trials`` broadcasts, each timed until 99% of the other members
  delivered it (its receipt time in the receiving process).
* profile (not part of the default run): cProfile inside one idle member of
  a ``--members`` mesh for ``--profile-seconds``; top functions, loop
  iterations and wakeups per second.

Each line prints the figure, the goal, and met / NOT met (goals are checked
on FlowMesh as configured by default, sealed, when it was measured).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import keyring as keyring_bench  # noqa: E402  (bench/keyring.py)
from clusters import HERE, MESH_KEY, Cluster, FlowMeshCluster, SerfCluster  # noqa: E402
from support import Children, LoopbackCounters, ProcSample, pct  # noqa: E402

GOALS = {
    "detect_p99_s": 2.0,
    "soak_deaths": 0,
    "idle_cpu_pct": 0.5,
    "idle_sent_per_s": 6.0,
    "idle_rss_mb": 30.0,
    "converge_100_s": 10.0,
    "spread_99_s": 1.0,
}

RESULTS: dict = {}

#: which labels each idle figure is compared with, in the same run
BASELINES = {
    "FlowMesh sealed": ("FlowMesh authenticated", "Serf encrypted"),
    "FlowMesh authenticated": ("Serf unencrypted",),
    "Serf encrypted": ("Serf unencrypted",),
}


def modes(args, scenario: str) -> list[bool]:
    """The encryption modes a scenario runs in: [True] sealed / Serf encrypted,
    [False] authenticated / unencrypted, [True, False] both (idle only)."""
    if args.encrypt == "off":
        return [False]
    if scenario == "idle" and args.encrypt in (None, "both"):
        return [True, False]
    return [True]


def say(text: str) -> None:
    print(text, flush=True)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "n/a"
    return f"{a / b:.2f}x"


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": statistics.fmean(values), "min": min(values),
            "median": statistics.median(values), "max": max(values)}


# -- converge -------------------------------------------------------------------

async def converge_once(cluster: Cluster, n: int) -> dict | None:
    startup = await cluster.start(n)
    if startup is None:
        return None
    return {"from_spawn_s": startup.from_spawn, "from_ready_s": startup.from_ready}


async def converge(children, tmp, args, serf: bool) -> None:
    runs: dict[str, list[dict]] = {"flowmesh": [], "serf": []}
    for run in range(args.converge_runs):
        on = modes(args, "converge")[0]
        systems: list[tuple[str, Cluster]] = [
            ("flowmesh", FlowMeshCluster(children, tmp, eager_import=args.eager_import, encrypt=on))]
        if serf:
            systems.append(("serf", SerfCluster(children, tmp, encrypt=on)))
        if run % 2:
            systems.reverse()  # alternate who goes first, so neither always meets a warm cache
        for key, cluster in systems:
            try:
                r = await converge_once(cluster, args.members)
            finally:
                await cluster.close()
            runs[key].append(r or {"from_spawn_s": math.inf, "from_ready_s": math.inf})
            await asyncio.sleep(1)
    RESULTS["converge"] = runs

    def fmt(rs: list[dict], k: str) -> str:
        values = [r[k] for r in rs]
        return (f"median {statistics.median(values):.2f} s "
                f"(runs: {', '.join(f'{v:.2f}' for v in values)})")

    fm = statistics.median(r["from_spawn_s"] for r in runs["flowmesh"])
    on = modes(args, "converge")[0]
    fm_label, sf_label = ("FlowMesh sealed", "Serf encrypted") if on else ("FlowMesh authenticated",
                                                                           "Serf unencrypted")
    line = (f"converge {args.members}: {fm_label} {fmt(runs['flowmesh'], 'from_spawn_s')} from start "
            f"incl. process start-up, {fmt(runs['flowmesh'], 'from_ready_s')} from all up")
    if serf:
        sf = statistics.median(r["from_spawn_s"] for r in runs["serf"])
        say(line)
        say(f"converge {args.members}: {sf_label} {fmt(runs['serf'], 'from_spawn_s')} from start "
            f"incl. process start-up, {fmt(runs['serf'], 'from_ready_s')} from all up")
        fr = statistics.median(r["from_ready_s"] for r in runs["flowmesh"])
        sr = statistics.median(r["from_ready_s"] for r in runs["serf"])
        # both verdicts: from all up compares the protocols; incl. start-up adds
        # the interpreters' start (19 Python processes at once on this machine)
        say(f"converge {args.members}: FlowMesh/Serf {ratio(fr, sr)} from all up (goal: within Serf's "
            f"time, same run): {verdict(fr <= sr)}; {ratio(fm, sf)} incl. process start-up: "
            f"{verdict(fm <= sf)}")
    else:
        say(line + " (goal: within Serf's time: Serf not run)")


# -- idle -------------------------------------------------------------------------

async def measure_idle(cluster: Cluster, seconds: float, counters: LoopbackCounters) -> dict:
    members = list(cluster.names)
    pids = {m: cluster.pid(m) for m in members}
    counting = counters.watch([cluster.port(m) for m in members])
    fm = isinstance(cluster, FlowMeshCluster)
    s0 = await cluster.stats() if fm else {}
    k0 = counters.read() if counting else {}
    p0 = {m: ProcSample.read(pids[m]) for m in members}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    s1 = await cluster.stats() if fm else {}
    k1 = counters.read() if counting else {}
    p1 = {m: ProcSample.read(pids[m]) for m in members}
    dt = time.monotonic() - t0
    per: dict[str, dict] = {}
    for m in members:
        a, b = p0[m], p1[m]
        row = {"cpu_pct": 100 * (b.cpu_s - a.cpu_s) / dt, "rss_mb": b.rss_mb, "pss_mb": b.pss_mb,
               "wakeups_per_s": (b.wakeups - a.wakeups) / dt}
        if counting:
            port = cluster.port(m)
            row["wire_sent_per_s"] = (k1[port][0] - k0[port][0]) / dt
            row["wire_received_per_s"] = (k1[port][1] - k0[port][1]) / dt
            row["wire_sent_bytes_per_s"] = (k1[port][2] - k0[port][2]) / dt
            row["wire_received_bytes_per_s"] = (k1[port][3] - k0[port][3]) / dt
        if fm:
            row["sent_per_s"] = (s1[m]["sent"] - s0[m]["sent"]) / dt
            row["received_per_s"] = (s1[m]["received"] - s0[m]["received"]) / dt
        per[m] = row
    keys = per[members[0]].keys()
    out = {"seconds": dt, "members": per, "summary": {k: summary([r[k] for r in per.values()])
                                                       for k in keys}}
    if counting:
        sent = sum(r["wire_sent_per_s"] for r in per.values())
        out["bytes_per_datagram"] = (sum(r["wire_sent_bytes_per_s"] for r in per.values()) / sent
                                     if sent else math.nan)
    return out


async def lone_member_rss(children: Children, eager: bool) -> float:
    """Resident memory of one member process alone (no peers), 2 s after it is up."""
    args = [sys.executable, str(HERE / "mesh_member.py"), "--key", MESH_KEY, "--name", "lone"]
    if eager:
        args.append("--eager-import")
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)
    children.add(proc.pid)
    try:
        await asyncio.wait_for(proc.stdout.readline(), 30)  # type: ignore[union-attr]
        await asyncio.sleep(2)
        return ProcSample.read(proc.pid).rss_mb
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        children.discard(proc.pid)


def print_idle(idle: dict[str, dict], members: int) -> None:
    """One block per figure, one line per measured cluster (label -> measure_idle()):
    the figure, then its ratio to each of its baselines (BASELINES) measured too."""
    say(f"idle {members}: {next(iter(idle.values()))['seconds']:.0f} s measured per member process; "
        f"{', '.join(idle)}, one cluster after the other")
    width = max(len(label) for label in idle)
    goal_on = next((label for label in idle if label.startswith("FlowMesh")), None)

    def cell(d: dict, k: str, digits: int) -> str:
        if k not in d:
            return "n/a"
        return f"mean {d[k]['mean']:.{digits}f}, max {d[k]['max']:.{digits}f}"

    def block(title: str, k: str, digits: int = 2, goal: tuple[str, float, str] | None = None,
              extra=None) -> None:
        say(title)
        for label, result in idle.items():
            f = result["summary"]
            parts = [cell(f, k, digits)]
            if extra:
                parts[0] += extra(label, result)
            for base in BASELINES.get(label, ()):
                if base in idle and k in f and k in idle[base]["summary"]:
                    parts.append(f"/ {base} {ratio(f[k]['mean'], idle[base]['summary'][k]['mean'])}")
            if goal and label == goal_on:
                key, bound, unit = goal
                parts.append(f"goal <= {bound:g}{unit} on the max: {verdict(f[key]['max'] <= bound)}")
            say(f"  {label:<{width}}  " + " | ".join(parts))

    block("idle CPU, % of one core per member:", "cpu_pct",
          goal=("cpu_pct", GOALS["idle_cpu_pct"], ""))
    block("idle resident memory, MB per member:", "rss_mb", 1, goal=("rss_mb", GOALS["idle_rss_mb"], " MB"))
    block("idle proportional memory (PSS: pages shared by the members counted once), MB per member, "
          "no goal:", "pss_mb", 1)
    counted = any("wire_sent_per_s" in r["summary"] for r in idle.values())
    if counted:
        block("idle datagrams sent per member per s (kernel count):", "wire_sent_per_s",
              goal=("sent_per_s", GOALS["idle_sent_per_s"], "/s, by stats()"),
              extra=lambda label, r: (f" (stats(): {cell(r['summary'], 'sent_per_s', 2)})"
                                      if "sent_per_s" in r["summary"] else ""))
        block("idle datagrams received per member per s (kernel count, no goal):", "wire_received_per_s")
        block("idle bytes sent per member per s (UDP payload, kernel count, no goal):",
              "wire_sent_bytes_per_s", 0,
              extra=lambda label, r: f" ({r['bytes_per_datagram']:.1f} bytes a datagram)")
        block("idle bytes received per member per s (UDP payload, kernel count, no goal):",
              "wire_received_bytes_per_s", 0)
    else:
        block("idle datagrams sent per member per s (stats(); not counted by the kernel here):",
              "sent_per_s", goal=("sent_per_s", GOALS["idle_sent_per_s"], "/s"))
        block("idle datagrams received per member per s (stats(), no goal):", "received_per_s")
    block("idle wakeups per member per s (voluntary context switches, no goal):", "wakeups_per_s", 1)


def print_seal_cost(idle: dict[str, dict], cost: dict) -> None:
    """What bench/keyring.py's cost per datagram predicts for an idle member, beside
    what the idle clusters measured."""
    keyring_bench.report(cost, say)
    sealed, plain = idle.get("FlowMesh sealed"), idle.get("FlowMesh authenticated")
    if not sealed or not plain:
        return
    extra = keyring_bench.extra_us_per_datagram(cost)
    rate = sealed["summary"]["sent_per_s"]["mean"]  # each datagram sealed once and opened once
    measured = sealed["summary"]["cpu_pct"]["mean"] - plain["summary"]["cpu_pct"]["mean"]
    say(f"idle sealing cost per member: {extra:+.2f} µs a datagram x {rate:.2f} datagrams/s sealed "
        f"(and as many opened) predicts {extra * rate / 1e4:+.4f}% of a core; measured "
        f"sealed - authenticated {measured:+.3f}% (the machine's noise is larger)")


# -- detect -------------------------------------------------------------------------

async def detect(cluster: Cluster, trials: int, rng: random.Random) -> dict:
    times: list[float] = []
    rejoin: list[float] = []
    missed = 0
    for trial in range(trials):
        if not await cluster.wait(cluster.converged, 60):
            say(f"  {cluster.system}: not converged before crash {trial + 1}; going on")
        await asyncio.sleep(rng.uniform(1.0, 2.0))  # a random phase against the probe schedule
        victim = cluster.names[1 + trial % (len(cluster.names) - 1)]
        others = [m for m in cluster.names if m != victim]
        dead_at: dict[str, float] = {}

        def seen(t, observer, node, kind, victim=victim, dead_at=dead_at):
            if node == victim and kind in ("dead",) and observer not in dead_at:
                dead_at[observer] = t

        cluster.listeners.append(seen)
        crashed = await cluster.kill(victim)
        await cluster.wait(lambda dead_at=dead_at, others=others: len(dead_at) == len(others), 60)
        cluster.listeners.remove(seen)
        got = [dead_at[o] - crashed for o in others if o in dead_at]
        missed += len(others) - len(got)
        times += got + [math.inf] * (len(others) - len(got))
        t = time.monotonic()
        await cluster.restart(victim)
        if await cluster.wait(cluster.converged, 60):
            rejoin.append(time.monotonic() - t)
    return {"trials": trials, "observations": len(times), "missed": missed, "times_s": times,
            "p50_s": pct(times, 50), "p99_s": pct(times, 99), "max_s": max(times),
            "rejoin_median_s": statistics.median(rejoin) if rejoin else math.inf}


def print_detect(fm: dict, sf: dict | None, members: int) -> None:
    def fmt(d: dict) -> str:
        miss = f", {d['missed']} never" if d["missed"] else ""
        return (f"p50 {d['p50_s']:.2f} s, p99 {d['p99_s']:.2f} s, max {d['max_s']:.2f} s "
                f"({d['trials']} crashes, {d['observations']} observations{miss}; "
                f"restarted member seen alive by all in {d['rejoin_median_s']:.2f} s, median)")
    def mode(d: dict, on: str, off: str) -> str:
        return on if d["encrypt"] else off

    say(f"detect {members}: FlowMesh {mode(fm, 'sealed', 'authenticated')} {fmt(fm)}")
    if sf:
        say(f"detect {members}: Serf {mode(sf, 'encrypted', 'unencrypted')} {fmt(sf)}")
    tail = f"FlowMesh/Serf p99 {ratio(fm['p99_s'], sf['p99_s'])}, " if sf else ""
    say(f"detect {members}: {tail}goal p99 <= {GOALS['detect_p99_s']:.0f} s: "
        f"{verdict(fm['p99_s'] <= GOALS['detect_p99_s'])}")


# -- scenarios ----------------------------------------------------------------------

async def idle_and_detect(children, tmp, args, serf: bool, only: str | None) -> None:
    rng = random.Random(1)
    idle_modes = modes(args, "idle") if only in (None, "idle") else []
    detect_on = modes(args, "detect")[0] if only in (None, "detect") else None
    idle: dict[str, dict] = {}
    detected: dict[str, dict] = {}
    # (cluster, measure idle, run detect): every idle mode, then detect in its mode
    # on a cluster already started for idle when there is one
    plan: list[tuple[Callable[[], Cluster], bool, bool]] = []
    kinds: list[type[Cluster]] = [FlowMeshCluster] + ([SerfCluster] if serf else [])
    for kind in kinds:
        for on in dict.fromkeys(idle_modes + ([detect_on] if detect_on is not None else [])):
            def make(kind=kind, on=on) -> Cluster:
                if kind is FlowMeshCluster:
                    return FlowMeshCluster(children, tmp, eager_import=args.eager_import, encrypt=on)
                return SerfCluster(children, tmp, encrypt=on)
            plan.append((make, on in idle_modes, on == detect_on))
    with LoopbackCounters() as counters:
        for make, do_idle, do_detect in plan:
            cluster = make()
            try:
                for attempt in (1, 2):  # a fresh cluster once more: the machine is shared
                    if await cluster.start(args.members) is not None:
                        break
                    say(f"{cluster.label}: {args.members} members did not converge in 60 s "
                        f"({cluster.progress()}){'; starting a fresh cluster' if attempt == 1 else ''}")
                    await cluster.close()
                    cluster = make()
                else:
                    continue
                if do_idle:
                    await asyncio.sleep(args.settle)
                    idle[cluster.label] = await measure_idle(cluster, args.idle_seconds, counters)
                if do_detect:
                    detected[cluster.system] = await detect(cluster, args.trials, rng)
                    detected[cluster.system]["encrypt"] = cluster.encrypt
            finally:
                await cluster.close()
        counted = counters.available
    if idle:
        RESULTS["idle"] = idle
        print_idle(idle, args.members)
        if not counted:
            say("note: datagrams not counted by the kernel (needs root and nft): Serf's datagrams/s n/a")
    if any(label.startswith("FlowMesh") for label in idle):
        lazy = await lone_member_rss(children, eager=False)
        eager = await lone_member_rss(children, eager=True)
        RESULTS["lone_member_rss_mb"] = {"lazy": lazy, "eager": eager}
        say(f"idle RSS of a lone member process: {lazy:.1f} MB importing only the mesh, {eager:.1f} MB "
            f"also importing the agent, outbox and shipper as flowmesh_edge once did")
        if len(idle_modes) > 1:
            cost = keyring_bench.measure()
            RESULTS["seal_cost"] = cost
            print_seal_cost(idle, cost)
    if "FlowMesh" in detected:
        RESULTS["detect"] = detected
        print_detect(detected["FlowMesh"], detected.get("Serf"), args.members)


async def soak(children, tmp, args) -> None:
    cluster = FlowMeshCluster(children, tmp, loss=args.loss, eager_import=args.eager_import,
                              prefix="soak", encrypt=modes(args, "soak")[0])
    deaths: list[tuple[str, str]] = []
    try:
        if await cluster.start(args.members, timeout=120) is None:
            say(f"soak: {args.members} members did not converge in 120 s at {args.loss:.0%} loss "
                f"({cluster.progress()})")
            RESULTS["soak"] = {"converged": False}
            return
        cluster.listeners.append(lambda t, o, n, k: deaths.append((o, n)) if k == "dead" else None)
        s0 = await cluster.stats()
        t0 = time.monotonic()
        await asyncio.sleep(args.soak_seconds)
        s1 = await cluster.stats()
        seconds = time.monotonic() - t0
    finally:
        await cluster.close()

    def delta(k: str) -> int:
        return sum(s1[m][k] - s0[m][k] for m in s1)

    r = {"members": args.members, "seconds": seconds, "loss": args.loss, "deaths": len(deaths),
         "members_declared_dead": len({n for _, n in deaths}), "suspicions": delta("suspicions"),
         "refutations": delta("refutations"), "sent": delta("sent"),
         "dropped_by_loss": delta("dropped_by_loss")}
    RESULTS["soak"] = r
    say(f"soak: {args.members} members, {seconds:.0f} s at {args.loss:.0%} loss on every link "
        f"({r['dropped_by_loss']} of {r['sent']} datagrams dropped): {r['deaths']} deaths "
        f"({r['members_declared_dead']} members), {r['suspicions']} suspicions, "
        f"{r['refutations']} refutations (goal {GOALS['soak_deaths']} false deaths"
        f"{'' if seconds >= 599 else ', and the goal is over 600 s'}): {verdict(r['deaths'] == 0)}")


async def spread(children, tmp, args) -> None:
    n = args.spread_members
    cluster = FlowMeshCluster(children, tmp, per_process=args.spread_per_process,
                              eager_import=args.eager_import, prefix="spr",
                              encrypt=modes(args, "spread")[0])
    times: list[float] = []
    try:
        t0 = time.monotonic()
        startup = await cluster.start(n, timeout=120)
        if startup is None:
            stats = await cluster.stats()
            churn = {k: sum(s[k] for s in stats.values()) for k in ("suspicions", "deaths",
                                                                    "refutations")}
            seconds = time.monotonic() - t0
            say(f"converge {n}: FlowMesh did not converge in {seconds:.0f} s "
                f"({len(cluster.processes())} processes of {args.spread_per_process}): "
                f"{cluster.progress()}; meanwhile {churn['suspicions']} suspicions, "
                f"{churn['deaths']} deaths, {churn['refutations']} refutations "
                f"(goal <= {GOALS['converge_100_s']:.0f} s): NOT met")
            say(f"spread: not measured, the {n}-member mesh never converged "
                f"(goal <= {GOALS['spread_99_s']:.0f} s): NOT met")
            RESULTS["spread"] = {"members": n, "per_process": args.spread_per_process,
                                 "converged": False, "waited_s": seconds,
                                 "progress": cluster.progress(), **churn}
            return
        procs = len(cluster.processes())
        say(f"converge {n}: FlowMesh {startup.from_spawn:.2f} s from start incl. process start-up, "
            f"{startup.from_ready:.2f} s from all up ({procs} processes of {args.spread_per_process}) "
            f"(goal <= {GOALS['converge_100_s']:.0f} s incl. start-up): "
            f"{verdict(startup.from_spawn <= GOALS['converge_100_s'])}")
        await asyncio.sleep(args.settle)
        need = math.ceil(0.99 * (n - 1) - 1e-9)
        for trial in range(args.spread_trials):
            origin = cluster.names[(trial * 37 + 1) % n]
            await cluster.command(cluster.procs[origin], {"cmd": "broadcast", "at": origin,
                                                          "trial": trial})
            sent = cluster.sent[trial]
            await cluster.wait(lambda trial=trial: len(cluster.got.get(trial, {})) >= need, 10)
            got = sorted(t for m, t in cluster.got.get(trial, {}).items() if m != origin)
            times.append(got[need - 1] - sent if len(got) >= need else math.inf)
            await asyncio.sleep(1)
    finally:
        await cluster.close()
    RESULTS["spread"] = {"members": n, "per_process": args.spread_per_process,
                         "converge_from_spawn_s": startup.from_spawn,
                         "converge_from_ready_s": startup.from_ready, "times_s": times}
    say(f"spread: {n} members, {len(times)} broadcasts, time until {need} of the {n - 1} others "
        f"delivered it: p50 {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
        f"(goal <= {GOALS['spread_99_s']:.0f} s, on the max): {verdict(max(times) <= GOALS['spread_99_s'])}")


async def profile(children, tmp, args) -> None:
    cluster = FlowMeshCluster(children, tmp, eager_import=args.eager_import,
                              encrypt=modes(args, "profile")[0])
    try:
        if await cluster.start(args.members) is None:
            say("profile: the mesh did not converge")
            return
        await asyncio.sleep(args.settle)
        member = cluster.names[len(cluster.names) // 2]
        pid = cluster.pid(member)
        path = str(Path(tmp) / "member.prof")
        a = ProcSample.read(pid)
        t0 = time.monotonic()
        await cluster.command(cluster.procs[member], {"cmd": "profile", "seconds": args.profile_seconds,
                                                      "path": path}, timeout=args.profile_seconds + 30)
        dt = time.monotonic() - t0
        b = ProcSample.read(pid)
    finally:
        await cluster.close()
    stats = pstats.Stats(path)
    polls = sum(v[1] for k, v in stats.stats.items() if k[2] == "<method 'poll' of 'select.epoll' objects>")
    say(f"profile: {member} of {args.members}, {dt:.0f} s under cProfile: "
        f"{100 * (b.cpu_s - a.cpu_s) / dt:.2f}% of a core (inflated by the profiler), "
        f"{(b.wakeups - a.wakeups) / dt:.1f} wakeups/s, {polls / dt:.1f} event-loop iterations/s")
    buf = io.StringIO()
    stats.stream = buf
    stats.sort_stats("tottime").print_stats(20)
    stats.sort_stats("cumulative").print_stats(25)
    say(buf.getvalue())
    RESULTS["profile"] = {"member": member, "seconds": dt, "wakeups_per_s": (b.wakeups - a.wakeups) / dt,
                          "loop_iterations_per_s": polls / dt}


async def main(args) -> None:
    serf = not args.no_serf and SerfCluster.available()
    only = args.only
    load = Path("/proc/loadavg").read_text().split()[0]
    idle = " and ".join("sealed" if on else "authenticated" for on in modes(args, "idle"))
    rest = "sealed" if modes(args, "detect")[0] else "authenticated"
    say(f"mesh benchmark: {args.members} members, one process each, on 127.0.0.1; default "
        f"MeshConfig; {os.cpu_count()} CPUs; load average {load}")
    say(f"encryption (--encrypt {args.encrypt or 'default'}): FlowMesh idle {idle}, other scenarios "
        f"{rest}; Serf with -encrypt where FlowMesh seals, without where it only authenticates")
    if serf:
        say(f"Serf {SerfCluster.version()} beside it: serf agent, LAN profile")
    elif not args.no_serf:
        say("Serf is not installed (apt-get install serf): FlowMesh's figures alone")
    with Children() as children, tempfile.TemporaryDirectory(prefix="flowmesh-bench-") as tmp:
        tmpdir = Path(tmp)
        if only in (None, "converge"):
            await converge(children, tmpdir, args, serf)
        if only in (None, "idle", "detect"):
            await idle_and_detect(children, tmpdir, args, serf, only)
        if only in (None, "spread"):
            await spread(children, tmpdir, args)
        if only in (None, "soak") and args.soak_seconds > 0:
            await soak(children, tmpdir, args)
        if only == "profile":
            await profile(children, tmpdir, args)
    if args.json:
        RESULTS["args"] = vars(args)
        RESULTS["goals"] = GOALS
        Path(args.json).write_text(json.dumps(RESULTS, indent=1, default=str))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["converge", "idle", "detect", "soak", "spread", "profile"])
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--converge-runs", type=int, default=3)
    ap.add_argument("--trials", type=int, default=10, help="crashes in detect")
    ap.add_argument("--settle", type=float, default=10, help="quiet seconds after convergence")
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--soak-seconds", type=float, default=600, help="0 skips the soak")
    ap.add_argument("--loss", type=float, default=0.10)
    ap.add_argument("--spread-members", type=int, default=100)
    ap.add_argument("--spread-per-process", type=int, default=10)
    ap.add_argument("--spread-trials", type=int, default=10)
    ap.add_argument("--profile-seconds", type=float, default=30)
    ap.add_argument("--encrypt", choices=["on", "off", "both"],
                    help="on: FlowMesh seals, Serf -encrypt; off: FlowMesh only authenticates, Serf "
                         "unencrypted; both: idle measures all four (other scenarios run on); "
                         "default: idle both, the rest on")
    ap.add_argument("--no-serf", action="store_true", help="FlowMesh alone")
    ap.add_argument("--eager-import", action="store_true",
                    help="members import the agent, outbox and shipper too (the package's old import)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    return ap.parse_args(argv)


if __name__ == "__main__":
    try:
        asyncio.run(main(parse_args()))
    except KeyboardInterrupt:
        say("interrupted: every member process was killed")
        sys.exit(130)
