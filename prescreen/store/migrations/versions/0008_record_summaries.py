"""record summaries: what a whole-record analysis (Holter) found, kept with its finding; a job's
progress while a long analysis runs; the blind index of a study's patient id

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ('results', 'shadow_results'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('summary', sa.JSON(), nullable=True))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('progress', sa.Float(), nullable=True))
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patient_index', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_studies_patient_index', ['patient_index'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index('ix_studies_patient_index')
        batch_op.drop_column('patient_index')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('progress')
    for table in ('shadow_results', 'results'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('summary')
