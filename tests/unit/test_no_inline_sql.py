"""Every statement product code (and the benchmarks) runs is a named query:
``flowmesh/queries.sql``, ``flowmesh_edge/outbox.sql``, ``bench/queries.sql``.
Tests may run their own SQL."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Driver calls that take a statement as their first argument.
STATEMENT_CALLS = {"execute", "executemany", "executescript", "exec_driver_sql", "copy"}


def inline_statements(source: str) -> list[int]:
    """Lines where a driver call is given a string literal (or f-string) as its statement."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in STATEMENT_CALLS and node.args
                and isinstance(node.args[0], ast.Constant | ast.JoinedStr)
                and (isinstance(node.args[0], ast.JoinedStr) or isinstance(node.args[0].value, str))):
            lines.append(node.lineno)
    return lines


def test_the_check_finds_literal_statements():
    assert inline_statements('conn.execute("select 1")\nconn.execute(query("x"))\n'
                             'cur.copy(f"copy {t} from stdin")\nc.execute(\n  """\n  delete from t""")') \
        == [1, 3, 4]


def test_python_runs_no_inline_sql():
    offenders = []
    for package in ("flowmesh", "flowmesh_edge", "monitors", "bench", "alembic"):
        for f in sorted((ROOT / package).rglob("*.py")):
            offenders += [f"{f.relative_to(ROOT)}:{n}" for n in inline_statements(f.read_text())]
    assert offenders == []
