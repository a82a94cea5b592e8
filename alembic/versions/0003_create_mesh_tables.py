"""0003 create mesh tables: executes sql/0003_create_mesh_tables.sql."""

from alembic import op
from flowmesh import migrations

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrations.execute_sql_file(op.get_bind().connection.driver_connection, revision)


def downgrade() -> None:
    raise NotImplementedError("FlowMesh migrations are forward-only")
