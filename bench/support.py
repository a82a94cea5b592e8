"""What the benchmarks share: a database to run against."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowmesh import embedded, migrations  # noqa: E402


@contextlib.contextmanager
def bench_database(url: str | None):
    """The URL given (migrated), or a throwaway embedded server's fresh database."""
    if url:
        migrations.upgrade(url)
        yield url
        return
    epg = embedded.package()
    with tempfile.TemporaryDirectory() as tmp, \
            epg.get_server(Path(tmp) / "pg", cleanup_mode="delete") as pg:
        with psycopg.connect(pg.get_uri(), autocommit=True) as c:
            c.execute("create database flowmesh_bench")
        url = pg.get_uri(database="flowmesh_bench")
        migrations.upgrade(url)
        yield url
