"""Keep ``supabase/migrations/`` identical to ``sql/``, under the Supabase CLI's names.

``sql/NNNN_name.sql`` becomes ``supabase/migrations/<TIMESTAMP>_name.sql`` with
``TIMESTAMP = 20261121000000 + NNNN``: ordered like the chain, so
``supabase db push`` applies the same files in the same order.

    python -m flowmesh.supabase_sync          # rewrite the copies
    python -m flowmesh.supabase_sync --check  # exit 1 when they differ
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import migrations

BASE_TIMESTAMP = 20261121000000


def supabase_dir() -> Path:
    return migrations.sql_dir().parent / "supabase" / "migrations"


def supabase_name(sql_file: Path) -> str:
    number, rest = sql_file.name.split("_", 1)
    return f"{BASE_TIMESTAMP + int(number)}_{rest}"


def differences() -> list[str]:
    expected = {supabase_name(f): f.read_bytes() for f in migrations.sql_files()}
    actual = {p.name: p.read_bytes() for p in supabase_dir().glob("*.sql")}
    problems = [f"missing {n}" for n in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected {n}" for n in sorted(actual.keys() - expected.keys())]
    problems += [
        f"differs {n}" for n in sorted(expected.keys() & actual.keys()) if expected[n] != actual[n]
    ]
    return problems


def sync() -> None:
    target = supabase_dir()
    target.mkdir(parents=True, exist_ok=True)
    wanted = {supabase_name(f): f for f in migrations.sql_files()}
    for stale in target.glob("*.sql"):
        if stale.name not in wanted:
            stale.unlink()
    for name, source in wanted.items():
        (target / name).write_bytes(source.read_bytes())


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        problems = differences()
        for p in problems:
            print(p)
        sys.exit(1 if problems else 0)
    sync()
