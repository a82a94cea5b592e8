from __future__ import annotations

import re
from pathlib import Path

import pytest

from flowmesh.queries import all_queries, parse, query

ROOT = Path(__file__).resolve().parents[2]


def test_parse_splits_named_blocks_and_drops_comments():
    text = "-- name: a\n-- what a does\nselect 1;\n\n-- name: b\nselect 2\n  from x;\n"
    assert parse(text) == {"a": "select 1", "b": "select 2\n  from x"}


def test_duplicate_and_empty_names_are_errors():
    with pytest.raises(ValueError, match="twice"):
        parse("-- name: a\nselect 1;\n-- name: a\nselect 2;")
    with pytest.raises(ValueError, match="empty"):
        parse("-- name: a\n-- nothing\n")


def test_every_query_used_in_the_code_exists_and_every_query_is_used():
    used = set()
    for package in ("flowmesh", "flowmesh_edge", "monitors", "bench", "alembic"):
        for f in (ROOT / package).rglob("*.py"):
            used |= set(re.findall(r'query\("([a-z_]+)"\)', f.read_text()))
            used |= set(re.findall(r"_rows\(conn, \"([a-z_]+)\"", f.read_text()))
            used |= set(re.findall(r"\"(check_one|check_all)\"", f.read_text()))
    assert used <= set(all_queries())
    assert set(all_queries()) <= used


def test_unknown_query_names_itself():
    with pytest.raises(KeyError, match="no query named 'nope'"):
        query("nope")


def test_migration_queries_name_the_version_schema():
    from flowmesh.migrations import VERSION_SCHEMA

    for name in ("migration_table", "migration_revision", "migration_schema"):
        assert f"{VERSION_SCHEMA}." in query(name) or query(name).endswith(VERSION_SCHEMA), name
