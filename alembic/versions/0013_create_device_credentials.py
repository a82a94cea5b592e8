"""0013 create device credentials: executes sql/0013_create_device_credentials.sql."""

from alembic import op
from flowmesh import migrations

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrations.execute_sql_file(op.get_bind().connection.driver_connection, revision)


def downgrade() -> None:
    raise NotImplementedError("FlowMesh migrations are forward-only")
