"""What each entry point loads: a mesh member stays small, the agent's hot path stays lean.

Each check runs in a fresh interpreter, since this test process has long
since imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("psycopg", "click", "alembic", "sqlalchemy")


def loaded(statement: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` are in sys.modules after ``statement`` runs in a new interpreter."""
    code = (f"{statement}\nimport json, sys\n"
            f"print(json.dumps([n for n in {list(names)!r} if n in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_the_mesh_loads_no_database_or_cli_library():
    assert loaded("from flowmesh_edge.mesh import MeshNode", HEAVY + ("sqlite3",)) == []


def test_the_agents_hot_path_loads_no_migration_library():
    statement = "import flowmesh_edge.agent, flowmesh_edge.shipper, flowmesh_edge.cli"
    assert loaded(statement, ("alembic", "sqlalchemy")) == []


def test_the_package_still_exports_every_name_lazily():
    code = ("import flowmesh_edge as f\n"
            "assert all(getattr(f, n) is not None for n in f.__all__)\n"
            "from flowmesh_edge import *")
    assert loaded(code, ("psycopg",)) == ["psycopg"]


def test_mdns_is_loaded_only_when_configured():
    statement = "from flowmesh_edge.mesh import MeshNode\nimport flowmesh_edge.cli, flowmesh_edge.meshes"
    assert loaded(statement, ("zeroconf", "ifaddr")) == []
    assert loaded("import flowmesh_edge.mesh.mdns", ("zeroconf",)) == ["zeroconf"]


def test_the_cli_and_the_mesh_load_no_transport_library_until_one_is_configured():
    transports = ("websockets", "zeroconf", "bleak", "bless")
    assert loaded("import flowmesh_edge.cli, flowmesh_edge.mesh", transports) == []
    assert loaded("import flowmesh_edge.mesh.transports.relay", transports) == ["websockets"]


def test_the_agents_endpoints_load_their_web_stack_only_when_asked_for():
    web = ("starlette", "uvicorn", "anyio", "h11")
    assert loaded("import flowmesh_edge.agent, flowmesh_edge.cli", web) == []
    assert loaded("import flowmesh_edge.http_endpoints", ("starlette", "uvicorn")) == ["starlette", "uvicorn"]


def test_the_agent_seals_without_loading_cryptography():
    # cryptography costs 8.8 MB resident; only pairing needs it (keyring.py)
    statement = ("import flowmesh_edge.cli, flowmesh_edge.agent, flowmesh_edge.links\n"
                 "from flowmesh_edge.mesh import MeshNode")
    assert loaded(statement, ("cryptography",)) == []
    assert loaded("import flowmesh_edge.pairing.protocol", ("cryptography",)) == ["cryptography"]
