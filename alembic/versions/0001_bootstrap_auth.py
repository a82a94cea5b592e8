"""0001 bootstrap auth: executes sql/0001_bootstrap_auth.sql."""

from alembic import op
from flowmesh import migrations

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrations.execute_sql_file(op.get_bind().connection.driver_connection, revision)


def downgrade() -> None:
    raise NotImplementedError("FlowMesh migrations are forward-only")
