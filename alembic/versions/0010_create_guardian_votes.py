"""0010 create guardian votes: executes sql/0010_create_guardian_votes.sql."""

from alembic import op
from flowmesh import migrations

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrations.execute_sql_file(op.get_bind().connection.driver_connection, revision)


def downgrade() -> None:
    raise NotImplementedError("FlowMesh migrations are forward-only")
