"""What sealing costs one datagram: Keyring.protect + Keyring.open, sealed against authenticated.

    python bench/keyring.py [--datagrams 20000] [--repeats 7] [--json FILE]

The datagram is the idle mesh's own: a PING between two 15-character node ids
(as tests/mesh/test_keyring.py builds it) and its PROBE_ACK. For each kind,
sealed (ChaCha20-Poly1305, ``MeshConfig()``'s default) and authenticated
(HMAC-SHA256, ``MeshConfig(encrypt=False)``):

* protect + open: ``Keyring.protect`` on the frame's signed part, then
  ``Keyring.open`` on the datagram (what a sender and a receiver each pay
  once per datagram), µs per datagram: the median and the least of
  ``--repeats`` runs of ``--datagrams`` each, the kinds alternated;
* the whole path: ``wire.encode_frame`` + ``open`` + ``wire.decode_frame``;
* the datagram's size in bytes.

Each line prints the figure and sealed / authenticated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowmesh_edge.mesh import wire  # noqa: E402
from flowmesh_edge.mesh.keyring import Keyring  # noqa: E402
from flowmesh_edge.mesh.wire import Frame, MessageType  # noqa: E402

KEY = "benchmark-mesh-key-000000000000"
SENDER, TARGET = "pi-kitchen-0001", "phone-alice-001"  # 15 characters, as a fleet names devices
KINDS = {"sealed": True, "authenticated": False}


def ping() -> Frame:
    return Frame(MessageType.PING, SENDER, 1_790_000_000, 7, 1_790_000_000,
                 wire.encode_ping(42, TARGET, (1_790_000_000, 3)), (), 1_790_000_000_000_000)


def probe_ack() -> Frame:
    return Frame(MessageType.PROBE_ACK, TARGET, 1_790_000_000, 8, 1_790_000_000,
                 wire.encode_probe_ack(42, (1_790_000_000, 3)), (), 1_790_000_000_000_000)


FRAMES = {"PING": ping, "PROBE_ACK": probe_ack}


def signed_part(frame: Frame) -> bytes:
    """The bytes encode_frame hands to protect (what is authenticated or sealed)."""
    got: list[bytes] = []
    wire.encode_frame(frame, lambda data: got.append(data) or data)
    return got[0]


def time_protect_open(ring: Keyring, data: bytes, n: int) -> float:
    """µs per datagram of protect + open."""
    protect, open_ = ring.protect, ring.open
    t = time.perf_counter()
    for _ in range(n):
        open_(protect(data))
    return (time.perf_counter() - t) / n * 1e6


def time_whole_path(ring: Keyring, frame: Frame, n: int) -> float:
    """µs per datagram of encode_frame + open + decode_frame."""
    protect, open_, encode, decode = ring.protect, ring.open, wire.encode_frame, wire.decode_frame
    t = time.perf_counter()
    for _ in range(n):
        decode(open_(encode(frame, protect))[0])
    return (time.perf_counter() - t) / n * 1e6


def measure(datagrams: int = 20000, repeats: int = 7) -> dict:
    """{frame: {"size": {kind: bytes}, "protect_open_us": {kind: {median, min}},
    "whole_path_us": {...}}} for PING and PROBE_ACK, sealed and authenticated."""
    rings = {kind: Keyring(KEY, encrypt=on) for kind, on in KINDS.items()}
    out: dict[str, dict] = {}
    for name, make in FRAMES.items():
        frame = make()
        data = signed_part(frame)
        sizes = {kind: len(wire.encode_frame(frame, ring.protect)) for kind, ring in rings.items()}
        runs: dict[str, dict[str, list[float]]] = {"protect_open_us": {k: [] for k in KINDS},
                                                   "whole_path_us": {k: [] for k in KINDS}}
        for ring in rings.values():  # warm up both before timing either
            time_protect_open(ring, data, datagrams // 10)
        for _ in range(repeats):
            for kind, ring in rings.items():  # alternated, so a noisy moment hits both
                runs["protect_open_us"][kind].append(time_protect_open(ring, data, datagrams))
                runs["whole_path_us"][kind].append(time_whole_path(ring, frame, datagrams))
        out[name] = {"size": sizes, **{
            what: {k: {"median": statistics.median(v), "min": min(v)} for k, v in per.items()}
            for what, per in runs.items()}}
    return {"datagrams": datagrams, "repeats": repeats, "frames": out}


def report(result: dict, say=print) -> None:
    n, r = result["datagrams"], result["repeats"]
    say(f"keyring: cost per datagram, median (least) of {r} runs of {n:,}, sealed "
        "(ChaCha20-Poly1305) against authenticated (HMAC-SHA256), 15-character node ids")
    for name, f in result["frames"].items():
        for what, title in (("protect_open_us", "protect + open"),
                            ("whole_path_us", "encode + open + decode")):
            s, a = f[what]["sealed"], f[what]["authenticated"]
            say(f"keyring {name:<9} {title:<22}: sealed {s['median']:.2f} µs ({s['min']:.2f}), "
                f"authenticated {a['median']:.2f} µs ({a['min']:.2f}); sealed/authenticated "
                f"{s['median'] / a['median']:.2f}x, {s['median'] - a['median']:+.2f} µs")
        s, a = f["size"]["sealed"], f["size"]["authenticated"]
        say(f"keyring {name:<9} datagram size          : sealed {s} bytes, authenticated {a} bytes; "
            f"sealed/authenticated {s / a:.2f}x, {s - a:+d} bytes")


def extra_us_per_datagram(result: dict) -> float:
    """What sealing adds to protect + open, averaged over PING and PROBE_ACK (an idle
    member sends one of each per probe it makes and answers)."""
    f = result["frames"].values()
    return statistics.fmean(x["protect_open_us"]["sealed"]["median"]
                            - x["protect_open_us"]["authenticated"]["median"] for x in f)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datagrams", type=int, default=20000, help="datagrams per timed run")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per kind")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    args = ap.parse_args(argv)
    result = measure(args.datagrams, args.repeats)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
