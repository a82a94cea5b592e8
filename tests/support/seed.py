"""Seeding a test database the way agents fill it: through the batch RPCs."""

from __future__ import annotations

import json


def beats(conn, tid, items: list[dict]) -> None:
    """Record heartbeats (items made by :func:`beat`) through record_mesh_heartbeats."""
    conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, json.dumps(items)))


def beat(node: str, seq: int, at: float, metrics: dict, **payload) -> dict:
    """One element of a record_mesh_heartbeats batch, sampled at Unix time ``at``."""
    return {"src": node, "seq": seq, "at": at, "payload": {"metrics": metrics, **payload}}


def mesh_events(conn, tid, items: list[dict]) -> None:
    """Record what members observed (items made by :func:`event`) through record_mesh_events."""
    conn.execute("select record_mesh_events(%s, %s)", (tid, json.dumps(items)))


def event(seq: int, kind: str, subject: str, observer: str, at: float, **details) -> dict:
    """One element of a record_mesh_events batch; keyword arguments are its details."""
    item = {"observer": observer, "seq": seq, "kind": kind, "subject": subject, "at": at}
    if details:
        item["details"] = details
    return item
