"""The pooler's directories: a socket directory under /tmp is refused when
someone else made that name first (a symlink, or another user's directory)."""

from __future__ import annotations

import pytest

from flowmesh import pooler
from flowmesh.errors import FlowMeshError


def long_pooler(tmp_path) -> pooler.Pooler:
    # a path too long for a unix socket under it: the socket goes to /tmp
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    handle = pooler.Pooler(deep / "pgbouncer")
    assert not str(handle.socket_dir).startswith(str(deep))
    return handle


def test_a_symlink_in_place_of_the_socket_directory_is_refused(tmp_path):
    handle = long_pooler(tmp_path)
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    handle.socket_dir.unlink(missing_ok=True)
    handle.socket_dir.symlink_to(target)
    try:
        with pytest.raises(FlowMeshError, match="not a directory of this user's"):
            pooler._make_directories(handle)
        assert oct(target.stat().st_mode & 0o777) == oct(0o755)  # untouched
    finally:
        handle.socket_dir.unlink()
