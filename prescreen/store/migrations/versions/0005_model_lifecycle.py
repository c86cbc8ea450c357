"""model lifecycle: operating points and latency of results, shadow results, model events,
monitoring alarms, the physician's own label on a report

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 00:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('operating_points', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('seconds', sa.Float(), nullable=True))
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('physician_label', sa.String(length=32), nullable=True))
    op.create_table(
        'shadow_results',
        sa.Column('id', sa.String(length=32), primary_key=True),
        sa.Column('series_id', sa.String(length=32), sa.ForeignKey('series.id', ondelete='CASCADE'), nullable=False),
        sa.Column('task', sa.String(length=32), nullable=False),
        sa.Column('model_name', sa.String(length=64), nullable=False),
        sa.Column('model_version', sa.String(length=64), nullable=False),
        sa.Column('flagged', sa.Boolean(), nullable=False),
        sa.Column('label', sa.String(length=32), nullable=False),
        sa.Column('score', sa.Float(), nullable=False),
        sa.Column('threshold', sa.Float(), nullable=False),
        sa.Column('probabilities', sa.JSON(), nullable=False),
        sa.Column('operating_points', sa.JSON(), nullable=True),
        sa.Column('seconds', sa.Float(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_shadow_results_series_id', 'shadow_results', ['series_id'])
    op.create_index('ix_shadow_results_task', 'shadow_results', ['task'])
    op.create_table(
        'model_events',
        sa.Column('id', sa.String(length=32), primary_key=True),
        sa.Column('task', sa.String(length=32), nullable=False),
        sa.Column('action', sa.String(length=16), nullable=False),
        sa.Column('tag', sa.String(length=128), nullable=False),
        sa.Column('previous_tag', sa.String(length=128), nullable=True),
        sa.Column('actor', sa.String(length=128), nullable=False),
        sa.Column('detail', sa.JSON(), nullable=True),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_model_events_task', 'model_events', ['task'])
    op.create_table(
        'alarms',
        sa.Column('id', sa.String(length=32), primary_key=True),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('task', sa.String(length=32), nullable=False),
        sa.Column('model_version', sa.String(length=64), nullable=False),
        sa.Column('institution', sa.String(length=128), nullable=True),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('detail', sa.JSON(), nullable=True),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('notified', sa.Boolean(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
    )
    op.create_index('ix_alarms_kind', 'alarms', ['kind'])


def downgrade() -> None:
    op.drop_index('ix_alarms_kind', table_name='alarms')
    op.drop_table('alarms')
    op.drop_index('ix_model_events_task', table_name='model_events')
    op.drop_table('model_events')
    op.drop_index('ix_shadow_results_task', table_name='shadow_results')
    op.drop_index('ix_shadow_results_series_id', table_name='shadow_results')
    op.drop_table('shadow_results')
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_column('physician_label')
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.drop_column('seconds')
        batch_op.drop_column('operating_points')
