"""0006 create heartbeat functions: executes sql/0006_create_heartbeat_functions.sql."""

from alembic import op
from flowmesh import migrations

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrations.execute_sql_file(op.get_bind().connection.driver_connection, revision)


def downgrade() -> None:
    raise NotImplementedError("FlowMesh migrations are forward-only")
