"""Mesh benchmark: FlowMesh's peer mesh beside HashiCorp Serf, one OS process per member.

    python bench/mesh.py [--only converge|idle|detect|soak|spread|profile]
                         [--members 20] [--trials 10] [--idle-seconds 60]
                         [--soak-seconds 600] [--loss 0.10]
                         [--spread-members 100] [--spread-per-process 10]
                         [--spread-trials 10] [--no-serf] [--eager-import]
                         [--json FILE]

Every member is a real process on 127.0.0.1 (bench/mesh_member.py for
FlowMesh, ``serf agent`` for Serf), both at their default settings
(``MeshConfig()``; Serf's LAN profile, no encryption). Scenarios:

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
  FlowMesh, by stats()["sent"] / ["received"] as well. Also a lone member
  process's memory with the package's names loaded lazily and eagerly.
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

Each line prints the figure, the goal, and met / NOT met.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

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
        systems = [("flowmesh", FlowMeshCluster(children, tmp, eager_import=args.eager_import))]
        if serf:
            systems.append(("serf", SerfCluster(children, tmp)))
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
    line = (f"converge {args.members}: FlowMesh {fmt(runs['flowmesh'], 'from_spawn_s')} from start "
            f"incl. process start-up, {fmt(runs['flowmesh'], 'from_ready_s')} from all up")
    if serf:
        sf = statistics.median(r["from_spawn_s"] for r in runs["serf"])
        say(line)
        say(f"converge {args.members}: Serf     {fmt(runs['serf'], 'from_spawn_s')} from start "
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
        row = {"cpu_pct": 100 * (b.cpu_s - a.cpu_s) / dt, "rss_mb": b.rss_mb,
               "wakeups_per_s": (b.wakeups - a.wakeups) / dt}
        if counting:
            port = cluster.port(m)
            row["wire_sent_per_s"] = (k1[port][0] - k0[port][0]) / dt
            row["wire_received_per_s"] = (k1[port][1] - k0[port][1]) / dt
        if fm:
            row["sent_per_s"] = (s1[m]["sent"] - s0[m]["sent"]) / dt
            row["received_per_s"] = (s1[m]["received"] - s0[m]["received"]) / dt
        per[m] = row
    keys = per[members[0]].keys()
    return {"seconds": dt, "members": per, "summary": {k: summary([r[k] for r in per.values()])
                                                        for k in keys}}


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


def print_idle(fm: dict, sf: dict | None, members: int) -> None:
    f, s = fm["summary"], (sf or {}).get("summary", {})

    def cell(d: dict, k: str, unit: str, digits: int = 2) -> str:
        if k not in d:
            return "n/a"
        return f"mean {d[k]['mean']:.{digits}f}{unit}, max {d[k]['max']:.{digits}f}{unit}"

    def compare(k: str, digits: int = 2) -> str:
        if not sf or k not in s:
            return ""
        return f" | Serf {cell(s, k, '', digits)} | FlowMesh/Serf {ratio(f[k]['mean'], s[k]['mean'])}"

    say(f"idle {members}: {fm['seconds']:.0f} s measured per member process "
        f"({'and per Serf agent' if sf else 'Serf not run'})")
    cpu = f["cpu_pct"]["max"]
    say(f"idle CPU % of one core: FlowMesh {cell(f, 'cpu_pct', '')}{compare('cpu_pct')} "
        f"(goal <= {GOALS['idle_cpu_pct']} per member, on the max): "
        f"{verdict(cpu <= GOALS['idle_cpu_pct'])}")
    rss = f["rss_mb"]["max"]
    say(f"idle RSS MB: FlowMesh {cell(f, 'rss_mb', '', 1)}{compare('rss_mb', 1)} "
        f"(goal <= {GOALS['idle_rss_mb']:.0f} MB, on the max): {verdict(rss <= GOALS['idle_rss_mb'])}")
    sent = f["sent_per_s"]["max"]
    wire = f" (kernel count: {cell(f, 'wire_sent_per_s', '')})" if "wire_sent_per_s" in f else ""
    say(f"idle datagrams sent/s: FlowMesh stats() {cell(f, 'sent_per_s', '')}{wire}"
        f"{compare('wire_sent_per_s')} (goal <= {GOALS['idle_sent_per_s']:.0f}/s, on the max): "
        f"{verdict(sent <= GOALS['idle_sent_per_s'])}")
    wire = f" (kernel count: {cell(f, 'wire_received_per_s', '')})" if "wire_received_per_s" in f else ""
    say(f"idle datagrams received/s: FlowMesh stats() {cell(f, 'received_per_s', '')}{wire}"
        f"{compare('wire_received_per_s')} (no goal)")
    say(f"idle wakeups/s (voluntary context switches): FlowMesh {cell(f, 'wakeups_per_s', '', 1)}"
        f"{compare('wakeups_per_s', 1)} (no goal)")


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
    say(f"detect {members}: FlowMesh {fmt(fm)}")
    if sf:
        say(f"detect {members}: Serf     {fmt(sf)}")
    tail = f"FlowMesh/Serf p99 {ratio(fm['p99_s'], sf['p99_s'])}, " if sf else ""
    say(f"detect {members}: {tail}goal p99 <= {GOALS['detect_p99_s']:.0f} s: "
        f"{verdict(fm['p99_s'] <= GOALS['detect_p99_s'])}")


# -- scenarios ----------------------------------------------------------------------

async def idle_and_detect(children, tmp, args, serf: bool, only: str | None) -> None:
    rng = random.Random(1)
    out: dict[str, dict] = {}
    with LoopbackCounters() as counters:
        systems: list[Cluster] = [FlowMeshCluster(children, tmp, eager_import=args.eager_import)]
        if serf:
            systems.append(SerfCluster(children, tmp))
        for cluster in systems:
            key = cluster.system.lower()
            out[key] = {}
            try:
                if await cluster.start(args.members) is None:
                    say(f"{cluster.system}: {args.members} members did not converge in 60 s "
                        f"({cluster.progress()})")
                    continue
                if only in (None, "idle"):
                    await asyncio.sleep(args.settle)
                    out[key]["idle"] = await measure_idle(cluster, args.idle_seconds, counters)
                if only in (None, "detect"):
                    out[key]["detect"] = await detect(cluster, args.trials, rng)
            finally:
                await cluster.close()
    if "idle" in out.get("flowmesh", {}):
        lazy = await lone_member_rss(children, eager=False)
        eager = await lone_member_rss(children, eager=True)
        out["flowmesh"]["lone_member_rss_mb"] = {"lazy": lazy, "eager": eager}
        print_idle(out["flowmesh"]["idle"], out.get("serf", {}).get("idle"), args.members)
        say(f"idle RSS of a lone member process: {lazy:.1f} MB importing only the mesh, {eager:.1f} MB "
            f"also importing the agent, outbox and shipper as flowmesh_edge once did")
        if not counters.available:
            say("note: datagrams not counted by the kernel (needs root and nft): Serf's datagrams/s n/a")
    if "detect" in out.get("flowmesh", {}):
        print_detect(out["flowmesh"]["detect"], out.get("serf", {}).get("detect"), args.members)
    RESULTS.setdefault("flowmesh", {}).update(out.get("flowmesh", {}))
    if serf:
        RESULTS.setdefault("serf", {}).update(out.get("serf", {}))


async def soak(children, tmp, args) -> None:
    cluster = FlowMeshCluster(children, tmp, loss=args.loss, eager_import=args.eager_import,
                              prefix="soak")
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
                              eager_import=args.eager_import, prefix="spr")
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
    cluster = FlowMeshCluster(children, tmp, eager_import=args.eager_import)
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
    say(f"mesh benchmark: {args.members} members, one process each, on 127.0.0.1; default "
        f"MeshConfig; {os.cpu_count()} CPUs; load average {load}")
    if serf:
        say(f"Serf {SerfCluster.version()} beside it: serf agent, LAN profile, no encryption")
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
