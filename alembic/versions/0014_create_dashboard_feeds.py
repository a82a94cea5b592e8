"""0014 create dashboard feeds: executes sql/0014_create_dashboard_feeds.sql."""

from alembic import op
from flowmesh import migrations

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrations.execute_sql_file(op.get_bind().connection.driver_connection, revision)


def downgrade() -> None:
    raise NotImplementedError("FlowMesh migrations are forward-only")
