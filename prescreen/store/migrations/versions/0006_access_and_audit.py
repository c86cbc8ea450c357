"""access control and audit: user roles, institutions and second factor; machine clients; sign-in
sessions and failures; the chained audit trail with signed checkpoints

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

GENESIS = '0' * 64


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('roles', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('institutions', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('totp_secret', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('totp_enabled', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('totp_last_step', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('totp_last_sign_in_step', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('recovery_hashes', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('password_changed_at', sa.DateTime(timezone=True), nullable=True))
    users = sa.table(
        'users', sa.column('is_admin', sa.Boolean()), sa.column('roles', sa.JSON()),
        sa.column('institution', sa.String()), sa.column('institutions', sa.JSON()),
    )
    # the old admin flag was an admin who also read: both roles, as before
    op.execute(users.update().where(users.c.is_admin == sa.true()).values(roles=['reader', 'admin']))
    op.execute(users.update().where(users.c.roles.is_(None)).values(roles=['reader']))
    op.execute(users.update().where(users.c.institutions.is_(None)).values(institutions=[]))
    op.create_table(
        'clients',
        sa.Column('id', sa.String(length=32), primary_key=True),
        sa.Column('name', sa.String(length=64), nullable=False, unique=True),
        sa.Column('institution', sa.String(length=128), nullable=False),
        sa.Column('ae_titles', sa.JSON(), nullable=False),
        sa.Column('networks', sa.JSON(), nullable=False),
        sa.Column('key_hash', sa.String(length=64), nullable=False, unique=True),
        sa.Column('active', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        'auth_sessions',
        sa.Column('id', sa.String(length=32), primary_key=True),
        sa.Column('user_id', sa.String(length=32), sa.ForeignKey('users.id', ondelete='CASCADE'), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('mfa_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index('ix_auth_sessions_user_id', 'auth_sessions', ['user_id'])
    op.create_table(
        'sign_in_failures',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('login', sa.String(length=64), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_sign_in_failures_login_at', 'sign_in_failures', ['login', 'at'])
    op.create_table(
        'audit_events',
        sa.Column('seq', sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column('at', sa.String(length=32), nullable=False),
        sa.Column('event', sa.String(length=32), nullable=False),
        sa.Column('event_id', sa.String(length=16), nullable=False),
        sa.Column('event_type', sa.String(length=16), nullable=True),
        sa.Column('action', sa.String(length=1), nullable=False),
        sa.Column('outcome', sa.Integer(), nullable=False),
        sa.Column('actor_kind', sa.String(length=16), nullable=False),
        sa.Column('actor', sa.String(length=128), nullable=False),
        sa.Column('address', sa.String(length=128), nullable=True),
        sa.Column('study_uid', sa.String(length=64), nullable=True),
        sa.Column('patient_hash', sa.String(length=64), nullable=True),
        sa.Column('object_id', sa.String(length=128), nullable=True),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('prev_hash', sa.String(length=64), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
    )
    op.create_index('ix_audit_events_actor_at', 'audit_events', ['actor', 'at'])
    op.create_index('ix_audit_events_study', 'audit_events', ['study_uid'])
    op.create_index('ix_audit_events_event_at', 'audit_events', ['event', 'at'])
    head = op.create_table(
        'audit_head',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
    )
    op.bulk_insert(head, [{'id': 1, 'seq': 0, 'hash': GENESIS}])
    op.create_table(
        'audit_checkpoints',
        sa.Column('seq', sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.Column('at', sa.String(length=32), nullable=False),
        sa.Column('key_id', sa.String(length=16), nullable=False),
        sa.Column('signature', sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('audit_checkpoints')
    op.drop_table('audit_head')
    op.drop_index('ix_audit_events_event_at', table_name='audit_events')
    op.drop_index('ix_audit_events_study', table_name='audit_events')
    op.drop_index('ix_audit_events_actor_at', table_name='audit_events')
    op.drop_table('audit_events')
    op.drop_index('ix_sign_in_failures_login_at', table_name='sign_in_failures')
    op.drop_table('sign_in_failures')
    op.drop_index('ix_auth_sessions_user_id', table_name='auth_sessions')
    op.drop_table('auth_sessions')
    op.drop_table('clients')
    with op.batch_alter_table('users', schema=None) as batch_op:
        for column in ('password_changed_at', 'recovery_hashes', 'totp_last_sign_in_step', 'totp_last_step', 'totp_enabled', 'totp_secret',
                       'institutions', 'roles'):
            batch_op.drop_column(column)
