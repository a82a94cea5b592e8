from datetime import UTC, datetime

from flowmesh.table import render


def test_render_aligns_and_formats():
    out = render(["a", "when"], [("x", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)), (None, {"k": 1})])
    assert out.splitlines() == [
        "a  when",
        "x  2026-01-02T03:04:05+00:00",
        '-  {"k":1}',
    ]
    assert render(["a"], []) == "(none)"
