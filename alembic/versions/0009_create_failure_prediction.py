"""0009 create failure prediction: executes sql/0009_create_failure_prediction.sql."""

from alembic import op
from flowmesh import migrations

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrations.execute_sql_file(op.get_bind().connection.driver_connection, revision)


def downgrade() -> None:
    raise NotImplementedError("FlowMesh migrations are forward-only")
