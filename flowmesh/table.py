"""Plain-text tables for the CLIs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def render(names: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns with a header; '(none)' when there are no rows."""
    if not rows:
        return "(none)"
    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(n), *(len(r[i]) for r in text)) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in text]
    return "\n".join(lines)


def json_default(value: object) -> str:
    """For json.dumps: ISO 8601 for datetimes, str() for the rest (UUIDs, decimals)."""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
