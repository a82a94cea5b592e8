"""0007 create heartbeat checks: executes sql/0007_create_heartbeat_checks.sql."""

from alembic import op
from flowmesh import migrations

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrations.execute_sql_file(op.get_bind().connection.driver_connection, revision)


def downgrade() -> None:
    raise NotImplementedError("FlowMesh migrations are forward-only")
