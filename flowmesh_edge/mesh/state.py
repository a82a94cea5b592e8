"""Versioned node state (a member's own facts: fps, battery, location...): the merge rule.

Each node owns its state. A local update bumps the version; remote copies
merge by (incarnation, version): a restarted node (higher incarnation) wins
even though its counter restarted. Two different states under the same
stamp (which a correct node never produces, but a replayed or corrupted
history might) are settled by comparing their canonical JSON, so every
member converges on the same choice.
"""

from __future__ import annotations

import json


def canonical(state: dict) -> str:
    return json.dumps(state, sort_keys=True, separators=(",", ":"))


def newer(candidate: tuple[int, int, dict], current: tuple[int, int, dict] | None) -> bool:
    """True when ``candidate`` (incarnation, version, state) should replace ``current``."""
    if current is None:
        return True
    if candidate[:2] != current[:2]:
        return candidate[:2] > current[:2]
    return canonical(candidate[2]) > canonical(current[2])
