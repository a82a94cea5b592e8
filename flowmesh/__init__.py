"""FlowMesh core: database location, migrations and named queries.

The edge agent (``flowmesh_edge``), the monitors (``monitors``) and the
operator CLI (``flowmesh``) all reach Postgres through this package.
"""

__version__ = "0.1.0"
