"""0015 create hash registry: executes sql/0015_create_hash_registry.sql."""

from alembic import op
from flowmesh import migrations

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrations.execute_sql_file(op.get_bind().connection.driver_connection, revision)


def downgrade() -> None:
    raise NotImplementedError("FlowMesh migrations are forward-only")
