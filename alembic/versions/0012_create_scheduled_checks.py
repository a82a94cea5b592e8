"""0012 create scheduled checks: executes sql/0012_create_scheduled_checks.sql."""

from alembic import op
from flowmesh import migrations

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrations.execute_sql_file(op.get_bind().connection.driver_connection, revision)


def downgrade() -> None:
    raise NotImplementedError("FlowMesh migrations are forward-only")
