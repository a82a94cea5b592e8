"""0004 create heartbeat log: executes sql/0004_create_heartbeat_log.sql."""

from alembic import op
from flowmesh import migrations

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrations.execute_sql_file(op.get_bind().connection.driver_connection, revision)


def downgrade() -> None:
    raise NotImplementedError("FlowMesh migrations are forward-only")
